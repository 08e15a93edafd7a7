#!/usr/bin/env bash
# End-to-end test of scripts/xlb-realserver. Run as root:
#   sudo tests/realserver/test-xlb-realserver.sh
# It works in throw-away network namespaces (xlbrs-test-PID and xlbrs-peer-PID,
# joined by a veth pair whose namespaced end is "eth0"), so it does not touch
# the host's addresses or its net.ipv4.conf.* sysctls; everything it creates
# is deleted on exit, also on failure. No traffic is sent.
# Override the script under test with XLB_REALSERVER=/path/to/xlb-realserver.
# Last line of output: "N passed, M failed"; exit status 0 only when M is 0.

set -u -o pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=${XLB_REALSERVER:-$HERE/../../scripts/xlb-realserver}
NS=xlbrs-test-$$
PEER_NS=xlbrs-peer-$$
TMP=""
PASS=0
FAIL=0

cleanup() {
	ip netns del "$NS" 2>/dev/null
	ip netns del "$PEER_NS" 2>/dev/null
	[[ -n $TMP ]] && rm -rf -- "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------- helpers

pass() {
	PASS=$((PASS + 1))
	printf 'ok   %s\n' "$1"
}

# fail NAME [DETAILS]
fail() {
	FAIL=$((FAIL + 1))
	printf 'FAIL %s\n' "$1"
	[[ -n ${2:-} ]] && printf '%s\n' "$2" | sed 's/^/     | /'
	return 0
}

# check_eq NAME EXPECTED ACTUAL: compares two (multi-line) texts, shows a diff.
check_eq() {
	if [[ $2 == "$3" ]]; then
		pass "$1"
	else
		fail "$1" "$(diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") | sed -n '1,40p')"
	fi
}

# check_grep NAME REGEX TEXT
check_grep() {
	if grep -Eq -- "$2" <<<"$3"; then
		pass "$1"
	else
		fail "$1" "no line matches /$2/ in:"$'\n'"$3"
	fi
}

# check_nogrep NAME REGEX TEXT
check_nogrep() {
	if grep -Eq -- "$2" <<<"$3"; then
		fail "$1" "unexpected match of /$2/ in:"$'\n'"$3"
	else
		pass "$1"
	fi
}

# check_rc NAME WANT: WANT is a number or "nonzero"; uses RS_RC/RS_OUT/RS_ERR.
check_rc() {
	local ok=0
	if [[ $2 == nonzero ]]; then
		((RS_RC != 0)) && ok=1
	else
		((RS_RC == $2)) && ok=1
	fi
	if ((ok)); then
		pass "$1 (exit $RS_RC)"
	else
		fail "$1: exit status $RS_RC, wanted $2" "stdout:"$'\n'"$RS_OUT"$'\n'"stderr:"$'\n'"$RS_ERR"
	fi
}

in_ns() { ip netns exec "$NS" "$@"; }

# rs ARGS...: runs the script in the namespace; sets RS_RC, RS_OUT, RS_ERR.
# XLBD is $RS_XLBD (the fake xlbd unless changed).
rs() {
	RS_OUT=$(ip netns exec "$NS" env XLB_REALSERVER_STATE="$STATE" XLBD="$RS_XLBD" \
		timeout 10 "$SCRIPT" "$@" 2>"$TMP/stderr")
	RS_RC=$?
	RS_ERR=$(<"$TMP/stderr")
}

# snapshot: everything xlb-realserver may touch, in the namespace.
snapshot() {
	in_ns bash -c '
		echo "## addresses"; ip -o addr show
		echo "## links (qdisc left out: the kernel attaches one on first up)"; ip -o link show | sed -e "s/\\\\.*//" -e "s/ qdisc [^ ]*//"
		echo "## routes"; ip -4 route show table all; ip -6 route show table all
		echo "## sysctls"; grep -r . /proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf 2>/dev/null | sort
		echo "## nft"; nft list ruleset
	'
}

# without_tunnels: drops the lines of devices that loading tunnel modules may create.
without_tunnels() { grep -Ev 'tunl0|ip6tnl0|sit0|ip6gre0|gre0|erspan0|gretap0' <<<"$1"; }

state_absent() {
	if [[ -e $STATE ]]; then
		fail "$1: state file removed" "still present: $STATE"$'\n'"$(cat -- "$STATE")"
	else
		pass "$1: no state file"
	fi
}

# bad_input NAME WANT_RC [NEEDLE] -- ARGS...: must fail, say something on
# stderr and change nothing.
bad_input() {
	local name=$1 want=$2 needle=$3 before after
	shift 4
	before=$(snapshot)
	rs "$@"
	check_rc "bad input: $name" "$want"
	if [[ -n $RS_ERR ]]; then
		pass "bad input: $name: message on stderr"
	else
		fail "bad input: $name: message on stderr" "stderr is empty"
	fi
	[[ -z $needle ]] || check_grep "bad input: $name: message mentions '$needle'" "$needle" "$RS_ERR"
	after=$(snapshot)
	check_eq "bad input: $name: nothing changed" "$before" "$after"
	state_absent "bad input: $name"
}

# ---------------------------------------------------------------- preconditions

if [[ $EUID -ne 0 ]]; then
	echo "this test must run as root (it creates network namespaces)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
missing=""
for tool in ip nft timeout; do command -v "$tool" >/dev/null 2>&1 || missing+=" $tool"; done
if [[ -n $missing ]]; then
	echo "missing tools:$missing (apt-get install iproute2 nftables coreutils)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
if [[ ! -x $SCRIPT ]]; then
	echo "script under test not found or not executable: $SCRIPT" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
SCRIPT=$(cd -- "$(dirname -- "$SCRIPT")" && pwd)/$(basename -- "$SCRIPT")

TMP=$(mktemp -d /tmp/xlbrs-test.XXXXXX) || exit 1
chmod 755 "$TMP"
STATE=$TMP/run/realserver.state
FAKE_XLBD=$TMP/xlbd
RS_XLBD=$FAKE_XLBD
cat >"$FAKE_XLBD" <<EOF
#!/bin/sh
# fake xlbd: records its arguments
printf '%s\n' "\$*" >>"$TMP/xlbd.args"
EOF
chmod 755 "$FAKE_XLBD"
FAILING_XLBD=$TMP/xlbd-failing
cat >"$FAILING_XLBD" <<EOF
#!/bin/sh
# fake xlbd that cannot attach anything
printf '%s\n' "\$*" >>"$TMP/xlbd-failing.args"
echo "xlbd: cannot attach the decapsulation program" >&2
exit 1
EOF
chmod 755 "$FAILING_XLBD"

# ---------------------------------------------------------------- setup

setup_ok=1
{
	ip netns add "$NS" &&
		ip netns add "$PEER_NS" &&
		ip link add eth0 netns "$NS" type veth peer name xlbrs-p0 netns "$PEER_NS" &&
		in_ns ip link set dev lo up &&
		in_ns sysctl -qw net.ipv6.conf.eth0.addr_gen_mode=1 &&
		in_ns ip addr add 192.0.2.10/24 dev eth0 &&
		in_ns ip link set dev eth0 up &&
		ip netns exec "$PEER_NS" sysctl -qw net.ipv6.conf.xlbrs-p0.addr_gen_mode=1 &&
		ip netns exec "$PEER_NS" ip addr add 192.0.2.1/24 dev xlbrs-p0 &&
		ip netns exec "$PEER_NS" ip link set dev xlbrs-p0 up
} || setup_ok=0
if ((!setup_ok)); then
	echo "could not set up the test namespaces" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
# Let the veth carrier settle so that link flags do not change under the snapshots.
for _ in 1 2 3 4 5 6 7 8 9 10; do
	in_ns ip -o link show dev eth0 | grep -q LOWER_UP && break
	sleep 0.1
done

S0=$(snapshot)
check_eq "snapshot is stable" "$S0" "$(snapshot)"

# ---------------------------------------------------------------- help

rs --help
check_rc "--help" 0
check_grep "--help documents the IPv6 neighbour-solicitation rule" 'neighbour solicitation' "$RS_OUT"
check_grep "--help documents the exit status for not root" 'root' "$RS_OUT"
rs -h
check_rc "-h" 0
rs help
check_rc "help" 0
check_grep "help shows the usage" '^Usage:' "$RS_OUT"

# ---------------------------------------------------------------- bad input

bad_input "no --vip" 2 'VIP' -- up --mode dr --iface eth0
bad_input "--vip 300.1.1.1" 2 '300\.1\.1\.1' -- up --vip 300.1.1.1 --mode dr --iface eth0
bad_input "malformed IPv6 VIP" 2 '2001:db8::1::2' -- up --vip 198.51.100.1,2001:db8::1::2 --mode dr --iface eth0
bad_input "--iface nosuchif" 2 'nosuchif' -- up --vip 198.51.100.1 --mode dr --iface nosuchif
bad_input "--mode foo" 2 'foo' -- up --vip 198.51.100.1 --mode foo --iface eth0
bad_input "no --mode" 2 'mode' -- up --vip 198.51.100.1 --iface eth0
bad_input "unknown option" 2 '--bogus' -- up --vip 198.51.100.1 --mode dr --iface eth0 --bogus
bad_input "--mss abc" 2 'mss' -- up --vip 198.51.100.1 --mode dr --iface eth0 --mss abc
bad_input "--decap with --mode dr" 2 'decap' -- up --vip 198.51.100.1 --mode dr --decap xdp --iface eth0
bad_input "--decap foo" 2 'foo' -- up --vip 198.51.100.1 --mode tun --decap foo --iface eth0
bad_input "no --iface and no default route" 2 'default route' -- up --vip 198.51.100.1 --mode dr
bad_input "unknown command" 2 'frobnicate' -- frobnicate
bad_input "doctor without VIP or state" 2 'VIP' -- doctor
RS_XLBD=$TMP/no-such-xlbd
bad_input "--decap xdp without xlbd" nonzero 'xlbd' -- up --vip 198.51.100.1 --mode tun --decap xdp --iface eth0
RS_XLBD=$FAKE_XLBD

# Not root: run a copy of the script as nobody.
if command -v setpriv >/dev/null 2>&1; then
	cp -- "$SCRIPT" "$TMP/xlb-realserver-copy" && chmod 755 "$TMP/xlb-realserver-copy"
	before=$(snapshot)
	RS_OUT=$(ip netns exec "$NS" setpriv --reuid=65534 --regid=65534 --clear-groups \
		env XLB_REALSERVER_STATE="$STATE" timeout 10 "$TMP/xlb-realserver-copy" \
		up --vip 198.51.100.1 --mode dr --iface eth0 2>"$TMP/stderr")
	RS_RC=$?
	RS_ERR=$(<"$TMP/stderr")
	check_rc "bad input: not root" 2
	check_grep "bad input: not root: message mentions root" 'root' "$RS_ERR"
	check_eq "bad input: not root: nothing changed" "$before" "$(snapshot)"
	state_absent "bad input: not root"
else
	echo "note: setpriv not found, not-root check skipped"
fi

# ---------------------------------------------------------------- DR, IPv4 + IPv6

VIPS=198.51.100.1,2001:db8::1
rs up --vip "$VIPS" --mode dr --iface eth0
check_rc "dr: up" 0
S1=$(snapshot)
lo_addrs=$(in_ns ip -o addr show dev lo)
check_grep "dr: 198.51.100.1/32 on lo" 'inet 198\.51\.100\.1/32 ' "$lo_addrs"
check_grep "dr: 2001:db8::1/128 on lo (nodad)" 'inet6 2001:db8::1/128 .*nodad' "$lo_addrs"
check_nogrep "dr: VIPs not on eth0" '198\.51\.100\.1|2001:db8::1' "$(in_ns ip -o addr show dev eth0)"
sysctls=$(in_ns sysctl net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce \
	net.ipv4.conf.eth0.arp_ignore net.ipv4.conf.eth0.arp_announce)
check_eq "dr: arp sysctls set" "net.ipv4.conf.all.arp_ignore = 1
net.ipv4.conf.all.arp_announce = 2
net.ipv4.conf.eth0.arp_ignore = 1
net.ipv4.conf.eth0.arp_announce = 2" "$sysctls"
ruleset=$(in_ns nft list ruleset)
check_grep "dr: nft drops NS for the IPv6 VIP on eth0" \
	'iifname "eth0" icmpv6 type nd-neighbor-solicit @th,64,128 0x20010db8000000000000000000000001 .*drop' "$ruleset"
if [[ -e $STATE ]]; then pass "dr: state file written at \$XLB_REALSERVER_STATE"; else fail "dr: state file written at \$XLB_REALSERVER_STATE" "missing: $STATE"; fi

rs up --vip "$VIPS" --mode dr --iface eth0
check_rc "dr: second up" 0
check_eq "dr: second up changes nothing" "$S1" "$(snapshot)"

rs status
check_rc "dr: status" 0
check_grep "dr: status mentions 198.51.100.1" '198\.51\.100\.1' "$RS_OUT"
check_grep "dr: status mentions 2001:db8::1" '2001:db8::1' "$RS_OUT"
check_grep "dr: status shows the mode" '^mode: dr$' "$RS_OUT"
check_grep "dr: status shows arp_ignore on eth0" 'net\.ipv4\.conf\.eth0\.arp_ignore = 1' "$RS_OUT"
check_grep "dr: status shows the nft table" '^nft: .*present' "$RS_OUT"

rs doctor
check_rc "dr: doctor" 0
check_nogrep "dr: doctor reports nothing WRONG" '^WRONG' "$RS_OUT"
check_grep "dr: doctor checks the VIPs" '^ok   VIP 2001:db8::1 on lo' "$RS_OUT"
bad_lines=$(grep -Ev '^(ok   |WRONG )' <<<"$RS_OUT")
check_eq "dr: doctor lines are all 'ok   ...' or 'WRONG ...'" "" "$bad_lines"

in_ns sysctl -qw net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.eth0.arp_ignore=0
rs doctor
check_rc "dr: doctor after breaking arp_ignore" 1
check_grep "dr: doctor names arp_ignore" '^WRONG .*arp_ignore.* — fix: sysctl -w net\.ipv4\.conf\.[a-z0-9]+\.arp_ignore=1' "$RS_OUT"
check_nogrep "dr: doctor does not blame arp_announce" '^WRONG .*arp_announce' "$RS_OUT"

before=$(snapshot)
rs down --vip "$VIPS" --mode tun --iface eth0
check_rc "dr: down with options that contradict the state is refused" 2
check_eq "dr: refused down changes nothing" "$before" "$(snapshot)"

rs down --vip "$VIPS" --mode dr --iface eth0
check_rc "dr: down" 0
S3=$(snapshot)
check_eq "dr: down restores every sysctl, address, route, link and nft rule" "$S0" "$S3"
check_nogrep "dr: nft table gone" 'xlb_realserver' "$(in_ns nft list ruleset)"
state_absent "dr: down"
rs down
check_rc "dr: down again (nothing to undo)" 0
check_eq "dr: down again changes nothing" "$S0" "$(snapshot)"

# ---------------------------------------------------------------- pre-existing state is kept

in_ns ip addr add 198.51.100.7/32 dev lo
in_ns sysctl -qw net.ipv4.conf.all.arp_announce=2
SPRE=$(snapshot)
rs up --vip 198.51.100.7 --mode dr --iface eth0
check_rc "pre-existing: up with an address already on lo" 0
rs up --vip 198.51.100.8 --mode dr --iface eth0
check_rc "pre-existing: up again with one more VIP" 0
lo_addrs=$(in_ns ip -o addr show dev lo)
check_grep "pre-existing: 198.51.100.8 added" 'inet 198\.51\.100\.8/32 ' "$lo_addrs"
check_grep "pre-existing: 198.51.100.7 still there" 'inet 198\.51\.100\.7/32 ' "$lo_addrs"
rs doctor
check_rc "pre-existing: doctor checks both VIPs from the state" 0
check_grep "pre-existing: doctor lists 198.51.100.7" '^ok   VIP 198\.51\.100\.7 on lo' "$RS_OUT"
rs down
check_rc "pre-existing: down" 0
SPOST=$(snapshot)
check_eq "pre-existing: down keeps what was there before up, and only that" "$SPRE" "$SPOST"
check_grep "pre-existing: 198.51.100.7 kept" 'inet 198\.51\.100\.7/32 ' "$(in_ns ip -o addr show dev lo)"
check_eq "pre-existing: all.arp_announce kept at 2" "2" "$(in_ns sysctl -n net.ipv4.conf.all.arp_announce)"
in_ns ip addr del 198.51.100.7/32 dev lo
in_ns sysctl -qw net.ipv4.conf.all.arp_announce=0
check_eq "pre-existing: back to the initial snapshot" "$S0" "$(snapshot)"

# ---------------------------------------------------------------- default interface

in_ns ip route add default via 192.0.2.1 dev eth0
SROUTE=$(snapshot)
rs up --vip 198.51.100.9 --mode dr
check_rc "default iface: up without --iface" 0
check_eq "default iface: eth0 taken from the default route" "1" "$(in_ns sysctl -n net.ipv4.conf.eth0.arp_ignore)"
rs status
check_grep "default iface: status shows eth0" '^iface: eth0' "$RS_OUT"
rs down
check_rc "default iface: down" 0
check_eq "default iface: down restores everything" "$SROUTE" "$(snapshot)"
in_ns ip route del default via 192.0.2.1 dev eth0

# ---------------------------------------------------------------- TUN, XDP decapsulation (fake xlbd), MSS clamp

in_ns sysctl -qw net.ipv4.conf.eth0.rp_filter=1
SPRE=$(snapshot)
: >"$TMP/xlbd.args"
rs up --vip "$VIPS" --mode tun --decap xdp --iface eth0 --mss 1400
check_rc "tun/xdp: up" 0
check_eq "tun/xdp: up ran 'xlbd decap --iface eth0'" "decap --iface eth0" "$(cat "$TMP/xlbd.args")"
check_eq "tun/xdp: rp_filter on eth0 relaxed to loose" "2" "$(in_ns sysctl -n net.ipv4.conf.eth0.rp_filter)"
lo_addrs=$(in_ns ip -o addr show dev lo)
check_grep "tun/xdp: VIPs on lo" 'inet 198\.51\.100\.1/32 ' "$lo_addrs"
ruleset=$(in_ns nft list ruleset)
check_grep "tun/xdp: MSS clamp for IPv4 VIPs" 'ip saddr @vip4 .*tcp option maxseg size set 1400' "$ruleset"
check_grep "tun/xdp: MSS clamp for IPv6 VIPs" 'ip6 saddr @vip6 .*tcp option maxseg size set 1400' "$ruleset"
check_grep "tun/xdp: NS rule" 'nd-neighbor-solicit @th,64,128 0x20010db8000000000000000000000001 .*drop' "$ruleset"
rs status
check_grep "tun/xdp: status shows decap xdp" '^decap: xdp$' "$RS_OUT"
rs doctor
check_rc "tun/xdp: doctor (the fake xlbd attaches nothing)" 1
check_grep "tun/xdp: doctor reports the missing XDP program" '^WRONG .*XDP.* — fix: xlbd decap --iface eth0' "$RS_OUT"
check_grep "tun/xdp: doctor checks rp_filter" '^ok   rp_filter in effect on eth0 = 2' "$RS_OUT"
check_grep "tun/xdp: doctor checks the MSS clamp" '^ok   .*MSS.*1400' "$RS_OUT"
rs down --mode tun --decap xdp --iface eth0
check_rc "tun/xdp: down" 0
check_eq "tun/xdp: down ran 'xlbd decap --iface eth0 --remove'" "decap --iface eth0
decap --iface eth0 --remove" "$(cat "$TMP/xlbd.args")"
check_eq "tun/xdp: down restores everything (rp_filter back to 1)" "$SPRE" "$(snapshot)"
state_absent "tun/xdp: down"
in_ns sysctl -qw net.ipv4.conf.eth0.rp_filter=0

# ---------------------------------------------------------------- a failing step rolls back

SPRE=$(snapshot)
RS_XLBD=$FAILING_XLBD
rs up --vip "$VIPS" --mode tun --decap xdp --iface eth0
RS_XLBD=$FAKE_XLBD
check_rc "rollback: up fails when 'xlbd decap' fails" 1
check_grep "rollback: the error shows xlbd's message" 'cannot attach' "$RS_ERR"
check_eq "rollback: xlbd was called" "decap --iface eth0" "$(cat "$TMP/xlbd-failing.args" 2>/dev/null)"
check_eq "rollback: what up had changed before the failure is undone" "$SPRE" "$(snapshot)"
state_absent "rollback"

# ---------------------------------------------------------------- TUN, kernel decapsulation

SPRE=$(snapshot)
had_tunl0=0
in_ns ip link show dev tunl0 >/dev/null 2>&1 && had_tunl0=1
rs up --vip "$VIPS" --mode tun --iface eth0
if ((RS_RC == 0)); then
	echo "note: ipip is available: testing kernel decapsulation"
	check_grep "tun/kernel: tunl0 is up" '<[^>]*\bUP\b' "$(in_ns ip -o link show dev tunl0)"
	check_grep "tun/kernel: ip6tnl0 is up" '<[^>]*\bUP\b' "$(in_ns ip -o link show dev ip6tnl0 2>&1)"
	rs doctor
	check_rc "tun/kernel: doctor" 0
	check_grep "tun/kernel: doctor checks rp_filter on tunl0" '^ok   rp_filter in effect on tunl0' "$RS_OUT"
	S_UP=$(snapshot)
	rs up --vip "$VIPS" --mode tun --iface eth0
	check_rc "tun/kernel: second up" 0
	check_eq "tun/kernel: second up changes nothing" "$S_UP" "$(snapshot)"
	rs down
	check_rc "tun/kernel: down" 0
	if ((had_tunl0)); then
		check_eq "tun/kernel: down restores everything" "$SPRE" "$(snapshot)"
	else
		check_eq "tun/kernel: down restores everything (tunnel devices aside)" \
			"$(without_tunnels "$SPRE")" "$(without_tunnels "$(snapshot)")"
		check_nogrep "tun/kernel: tunl0 down again" '<[^>]*\bUP\b' "$(in_ns ip -o link show dev tunl0)"
	fi
	state_absent "tun/kernel: down"
else
	echo "note: ipip is not available here: testing that --decap kernel fails cleanly"
	check_rc "tun/kernel: up fails without ipip" 1
	check_grep "tun/kernel: the error suggests --decap xdp" '--decap xdp' "$RS_ERR"
	check_eq "tun/kernel: failed up changes nothing" "$SPRE" "$(snapshot)"
	state_absent "tun/kernel: failed up"

	# The rest of --decap kernel, with veth devices standing in for the
	# fallback tunnel devices tunl0 and ip6tnl0 (down, strict rp_filter).
	echo "note: simulating tunl0 and ip6tnl0 with veth devices"
	in_ns ip link add tunl0 type veth peer name xlbrs-t4p &&
		in_ns ip link add ip6tnl0 type veth peer name xlbrs-t6p &&
		in_ns sysctl -qw net.ipv4.conf.tunl0.rp_filter=1
	SPRE=$(snapshot)
	rs up --vip "$VIPS" --mode tun --iface eth0
	check_rc "tun/kernel (simulated): up" 0
	check_grep "tun/kernel (simulated): tunl0 brought up" '<[^>]*\bUP\b' "$(in_ns ip -o link show dev tunl0)"
	check_grep "tun/kernel (simulated): ip6tnl0 brought up" '<[^>]*\bUP\b' "$(in_ns ip -o link show dev ip6tnl0)"
	check_eq "tun/kernel (simulated): rp_filter on tunl0 relaxed to loose" "2" "$(in_ns sysctl -n net.ipv4.conf.tunl0.rp_filter)"
	check_eq "tun/kernel (simulated): rp_filter on eth0 untouched" "0" "$(in_ns sysctl -n net.ipv4.conf.eth0.rp_filter)"
	rs doctor
	check_rc "tun/kernel (simulated): doctor" 0
	check_grep "tun/kernel (simulated): doctor checks tunl0" '^ok   tunl0 is up' "$RS_OUT"
	check_grep "tun/kernel (simulated): doctor checks rp_filter on tunl0" '^ok   rp_filter in effect on tunl0 = 2' "$RS_OUT"
	S_UP=$(snapshot)
	rs up --vip "$VIPS" --mode tun --decap kernel --iface eth0
	check_rc "tun/kernel (simulated): second up" 0
	check_eq "tun/kernel (simulated): second up changes nothing" "$S_UP" "$(snapshot)"
	in_ns ip link set dev tunl0 down
	rs doctor
	check_rc "tun/kernel (simulated): doctor with tunl0 down" 1
	check_grep "tun/kernel (simulated): doctor names tunl0" '^WRONG tunl0 is down — fix: ip link set dev tunl0 up' "$RS_OUT"
	rs up --vip "$VIPS" --mode dr --iface eth0
	check_rc "tun/kernel (simulated): up with another mode is refused" 2
	rs down
	check_rc "tun/kernel (simulated): down" 0
	check_eq "tun/kernel (simulated): down restores everything" "$SPRE" "$(snapshot)"
	state_absent "tun/kernel (simulated): down"
	in_ns ip link del tunl0
	in_ns ip link del ip6tnl0
fi

# ---------------------------------------------------------------- a state file per network namespace

# Without $XLB_REALSERVER_STATE each named namespace keeps its own (/run is shared by every
# namespace): an "up" in one does not refuse an "up" on another interface in another.
# rs_in NS ARGS...: like rs, in namespace NS and with the default state file.
rs_in() {
	local ns=$1
	shift
	RS_OUT=$(ip netns exec "$ns" env -u XLB_REALSERVER_STATE XLBD="$RS_XLBD" \
		timeout 10 "$SCRIPT" "$@" 2>"$TMP/stderr")
	RS_RC=$?
	RS_ERR=$(<"$TMP/stderr")
}
SPRE=$(snapshot)
rs_in "$NS" up --vip 198.51.100.21 --mode dr --iface eth0
check_rc "per namespace: up in the first" 0
rs_in "$PEER_NS" up --vip 198.51.100.22 --mode dr --iface xlbrs-p0
check_rc "per namespace: up on another interface in the second" 0
for ns in "$NS" "$PEER_NS"; do
	if [[ -e /run/xlb/realserver-$ns.state ]]; then
		pass "per namespace: /run/xlb/realserver-NS.state written for $ns"
	else
		fail "per namespace: /run/xlb/realserver-NS.state written for $ns" "$(ls /run/xlb 2>&1)"
	fi
done
rs_in "$NS" status
check_grep "per namespace: the first's status is its own" '198\.51\.100\.21' "$RS_OUT"
check_nogrep "per namespace: the first's status is not the second's" '198\.51\.100\.22' "$RS_OUT"
rs_in "$PEER_NS" down
check_rc "per namespace: down in the second" 0
rs_in "$NS" down
check_rc "per namespace: down in the first" 0
check_eq "per namespace: down restores the first" "$SPRE" "$(snapshot)"
for ns in "$NS" "$PEER_NS"; do
	if [[ -e /run/xlb/realserver-$ns.state ]]; then
		fail "per namespace: state file of $ns removed" "still present"
	else
		pass "per namespace: state file of $ns removed"
	fi
done

# ---------------------------------------------------------------- the end

check_eq "final: namespace back to the initial snapshot" "$(without_tunnels "$S0")" "$(without_tunnels "$(snapshot)")"
echo "$PASS passed, $FAIL failed"
((FAIL == 0))
