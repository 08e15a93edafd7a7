//! The few port names `xlbadm` knows without reading `/etc/services` (which would be I/O):
//! ipvsadm takes and prints ports by name through getservbyname/getservbyport.

/// Name and number of the common services, for both TCP and UDP.
const WELL_KNOWN: &[(&str, u16)] = &[
    ("ftp", 21),
    ("ssh", 22),
    ("smtp", 25),
    ("domain", 53),
    ("http", 80),
    ("https", 443),
];

/// The port called `name`, if it is one of [`WELL_KNOWN`].
pub(crate) fn port_by_name(name: &str) -> Option<u16> {
    WELL_KNOWN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, port)| *port)
}

/// The name of `port`, if it is one of [`WELL_KNOWN`].
pub(crate) fn name_by_port(port: u16) -> Option<&'static str> {
    WELL_KNOWN
        .iter()
        .find(|(_, p)| *p == port)
        .map(|(name, _)| *name)
}

/// The known names, for error messages.
pub(crate) fn names() -> String {
    WELL_KNOWN
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}
