//! Upgrading xlbd under load: a new daemon started on the pins of the running balancer, with the
//! same map layout (the program is swapped into the pinned links, the maps adopted), with another
//! layout (pins recorded with an older layout version: new maps, the rules and the connections
//! carried over), with a connection table it cannot read (refused, the balancer left alone), and
//! after a move to new maps that stopped half-way (new maps with the saved rules).
//! A client requests all along, and one kept-alive connection to a real server taken out of
//! scheduling (weight 0) must keep reaching it: only the connection table sends it there.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use lb_userspace::layout::{self, Versions};
use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, KeepAliveClient, VIP},
    root,
};

/// Waits until the daemon's log says it is serving for the `n`th time (its socket is bound
/// before it loads the data path).
fn serving(daemon: &Daemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.log().matches("xlbd is balancing").count() < n {
        assert!(
            Instant::now() < deadline,
            "xlbd did not start; its log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn upgrades_keep_every_flow_and_a_connection_table_of_another_layout_is_refused() {
    root::require();
    let lab = DrLab::new(2);
    let mut daemon = Daemon::start(&lab.balancer);
    serving(&daemon, 1);
    let vip = format!("{VIP}:80");
    daemon.adm_ok(&["-A", "-t", &vip, "-s", "mh"]);
    for i in 0..2 {
        let real = format!("{}:80", real_addr(i));
        daemon.adm_ok(&["-a", "-t", &vip, "-r", &real, "-g", "-w", "1"]);
    }
    assert_eq!(layout::read(&daemon.pin_dir), Some(Ok(Versions::CURRENT)));

    // One connection kept open; its server then gets no new flow.
    let (mut kept, owner) = KeepAliveClient::open(&lab.client);
    let owner_addr = real_addr(owner[2..].parse::<usize>().expect("rsN") - 1);
    daemon.adm_ok(&[
        "-e",
        "-t",
        &vip,
        "-r",
        &format!("{owner_addr}:80"),
        "-g",
        "-w",
        "0",
    ]);

    // A client requesting all along, one new connection at a time, until told to stop.
    let stop = format!("/tmp/{}-stop", lab.client.name());
    let _ = std::fs::remove_file(&stop);
    let requests = lab
        .client
        .command("sh")
        .args([
            "-c",
            &format!(
                "while [ ! -e {stop} ]; do curl -s --max-time 3 http://{VIP}/ || echo \"FAILED $?\"; \
                 sleep 0.02; done"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the request loop");
    let pause = || std::thread::sleep(Duration::from_millis(400));
    pause();

    // 1. The same layout: the maps are adopted, the program replaced.
    daemon.stop();
    daemon.spawn();
    serving(&daemon, 2);
    assert!(
        daemon.log().contains("adopted the running state"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        kept.again(),
        owner,
        "the kept connection moved (same layout)"
    );
    pause();

    // 2. Pins recorded with an older layout version: new maps, connections carried over. The
    // embryonic table unpinned, as the layout before it (2) left the pins.
    daemon.stop();
    let older = Versions {
        maps: Versions::CURRENT.maps - 1,
        ..Versions::CURRENT
    };
    layout::write(&daemon.pin_dir, older).expect("record an older layout");
    let embryonic = daemon.pin_dir.join(lb_common::maps::EMBRYONIC);
    std::fs::remove_file(&embryonic).expect("unpin the embryonic table");
    // And a map the older layouts had and this one has not (layout 7's clock), which the move
    // must unpin with the rest.
    let retired = daemon.pin_dir.join(lb_common::maps::RETIRED_CLOCK);
    aya::maps::MapData::from_pin(daemon.pin_dir.join(lb_common::maps::CONFIG))
        .expect("open a pinned map")
        .pin(&retired)
        .expect("pin it under the retired name");
    let started = Instant::now();
    daemon.spawn();
    serving(&daemon, 3);
    let upgrade_took = started.elapsed();
    let log = daemon.log();
    assert!(
        log.contains("the pinned maps have another layout")
            && log.contains("connections carried over to the new maps")
            && log.contains("upgrade done"),
        "{log}"
    );
    let copied = log
        .lines()
        .find(|l| l.contains("connections carried over to the new maps"))
        .and_then(|l| l.split("copied=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        copied.is_some_and(|n| n >= 1),
        "no connection carried:\n{log}"
    );
    assert_eq!(
        kept.again(),
        owner,
        "the kept connection moved across the move to new maps"
    );
    assert_eq!(layout::read(&daemon.pin_dir), Some(Ok(Versions::CURRENT)));
    assert!(embryonic.exists(), "the new map set has no embryonic table");
    assert!(!retired.exists(), "the retired map is still pinned");
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(
        listing.contains(&format!("{owner_addr}:80")) && listing.contains(&vip),
        "the rules did not come along:\n{listing}"
    );
    pause();

    // 3. A connection table of another layout: refused with the reason and the way out; the
    // balancer forwards on meanwhile.
    daemon.stop();
    let unreadable = Versions {
        conntrack: Versions::CURRENT.conntrack + 1,
        ..Versions::CURRENT
    };
    layout::write(&daemon.pin_dir, unreadable).expect("record another connection table");
    let refused = daemon.start_refused(&[]);
    assert!(
        refused.contains("cannot carry their connections over")
            && refused.contains("connection table layout 2, this xlbd's 1")
            && refused.contains(&format!("rm -r {}", daemon.pin_dir.display())),
        "{refused}"
    );
    assert_eq!(layout::read(&daemon.pin_dir), Some(Ok(unreadable)));
    pause();
    assert_eq!(
        kept.again(),
        owner,
        "the refused start disturbed the balancer"
    );

    // 4. The record of a move to new maps that stopped half-way: new maps with the saved rules
    // (its connection table is not trusted); new connections go on.
    layout::write(&daemon.pin_dir, Versions::UPGRADING).expect("record an interrupted move");
    daemon.spawn();
    serving(&daemon, 4);
    assert!(
        daemon.log().contains("stopped half-way"),
        "{}",
        daemon.log()
    );
    assert_eq!(layout::read(&daemon.pin_dir), Some(Ok(Versions::CURRENT)));
    assert!(embryonic.exists(), "the new map set has no embryonic table");
    assert!(!retired.exists(), "the retired map is still pinned");
    let listing = daemon.adm_ok(&["-L", "-n"]);
    assert!(
        listing.contains(&vip),
        "the rules did not come along:\n{listing}"
    );
    pause();
    daemon.stop();

    std::fs::write(&stop, "").expect("stop the request loop");
    let out = requests.wait_with_output().expect("request loop");
    let _ = std::fs::remove_file(&stop);
    let answers = String::from_utf8_lossy(&out.stdout);
    let failed = answers.lines().filter(|l| l.contains("FAILED")).count();
    let total = answers.lines().count();
    println!(
        "{total} requests across three upgrades and a refusal, {failed} failed; the move to new \
         maps took {upgrade_took:?}"
    );
    assert!(total > 20, "too few requests: {answers}");
    assert_eq!(
        failed,
        0,
        "requests failed:\n{answers}\nxlbd log:\n{}",
        daemon.log()
    );

    // Put the record back so that the daemon's own cleanup finds its layout.
    layout::write(&daemon.pin_dir, Versions::CURRENT).expect("restore the record");
    daemon.spawn_with(&["--detach-on-exit"]);
    daemon.stop();
}
