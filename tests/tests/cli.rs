//! Bad input to `portmap run` and `portmap list`: an error naming the flag and
//! the value, exit status 2 for bad input, and nothing attached or left behind.

use std::process::Output;

use portmap_tests::{bin_path, netns::Netns, require_root, unique_name};

/// A namespace with one veth end (`eth0`, peer in a second namespace).
fn node() -> (Netns, Netns) {
    require_root();
    let a = Netns::new(&unique_name("cli-n")).unwrap();
    let b = Netns::new(&unique_name("cli-p")).unwrap();
    a.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ])
    .unwrap();
    a.ip(&["link", "set", "eth0", "up"]).unwrap();
    a.ip(&["addr", "add", "198.18.0.1/24", "dev", "eth0"])
        .unwrap();
    (a, b)
}

fn run(ns: &Netns, args: &[&str]) -> Output {
    let socket = format!("/run/portmap-tests/{}.sock", ns.name());
    let out = ns
        .command(bin_path("portmap"))
        .arg("run")
        .args(args)
        .args(["--control-socket", &socket])
        .output()
        .unwrap();
    assert!(
        !std::path::Path::new(&socket).exists(),
        "no control socket left behind"
    );
    out
}

fn assert_refused(ns: &Netns, args: &[&str], mentions: &[&str]) {
    let out = run(ns, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} must exit 2; stderr: {stderr}"
    );
    for m in mentions {
        assert!(
            stderr.contains(m),
            "{args:?}: stderr should mention {m:?}:\n{stderr}"
        );
    }
    let link = String::from_utf8(
        ns.exec("ip", &["-d", "link", "show", "dev", "eth0"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!link.contains("xdp"), "{args:?} left XDP attached");
}

#[test]
fn bad_specs_are_refused_naming_flag_and_value() {
    let (ns, _peer) = node();
    let cases: &[(&str, &str)] = &[
        ("0:198.19.0.2:80", "host port 0 is out of range"),
        ("70000:198.19.0.2:80", "host port 70000 is out of range"),
        ("8080:198.19.0.2:0", "backend port 0 is out of range"),
        ("8080:198.19.0.999:80", "is not an IP address"),
        ("8080:2001:db8::2:80", "brackets"),
        ("8000-8002:198.19.0.2:9000-9001", "has 3 ports but"),
        ("8080:198.19.0.2:80/sctp", "unknown protocol 'sctp'"),
        ("198.18.0.1:8080:[2001:db8::2]:80", "different IP families"),
        (
            "8080:[2001:db8::2]:80:extra",
            "host address '8080' is not an IP address",
        ),
        ("8080:198.19.0.2:80:90:100", "colon-separated fields"),
    ];
    for (spec, why) in cases {
        assert_refused(
            &ns,
            &["--iface", "eth0", "-p", spec],
            &["--publish", spec, why],
        );
    }
}

#[test]
fn conflicts_between_flags_are_refused() {
    let (ns, _peer) = node();
    assert_refused(
        &ns,
        &[
            "--iface",
            "eth0",
            "-p",
            "8080:198.19.0.2:80",
            "-p",
            "8080:198.19.0.3:80",
        ],
        &["--publish", "*:8080/tcp", "published twice"],
    );
    assert_refused(
        &ns,
        &[
            "--iface",
            "eth0",
            "-p",
            "8000-8010:198.19.0.2:80-90",
            "-p",
            "0.0.0.0:8010:198.19.0.3:80",
        ],
        &["--publish", "*:8010/tcp", "published twice"],
    );
    assert_refused(
        &ns,
        &["--iface", "nope0", "-p", "8080:198.19.0.2:80"],
        &["--iface", "nope0", "no such network interface"],
    );
    assert_refused(
        &ns,
        &["--iface", "eth0", "--iface", "eth0"],
        &["--iface", "eth0", "given twice"],
    );
    assert_refused(
        &ns,
        &["--iface", "eth0", "--xdp-mode", "fast"],
        &["--xdp-mode", "fast"],
    );
    assert_refused(
        &ns,
        &["--iface", "eth0", "--metrics-addr", "localhost"],
        &["--metrics-addr", "localhost"],
    );
    assert_refused(
        &ns,
        &["--iface", "eth0", "--udp-timeout", "0s"],
        &["--udp-timeout", "0s", "positive"],
    );
    assert_refused(
        &ns,
        &["--iface", "eth0", "--max-backends", "0"],
        &["--max-backends", "0"],
    );
    assert_refused(&ns, &["-p", "8080:198.19.0.2:80"], &["--iface"]);
    // Socket-level load balancing degrades without a cgroup2 hierarchy, but
    // a --cgroup that is asked for and missing stays an error.
    assert_refused(
        &ns,
        &[
            "--iface",
            "eth0",
            "-p",
            "8080:198.19.0.2:80",
            "--cgroup",
            "/sys/fs/cgroup/portmap-no-such-cgroup",
        ],
        &[
            "--cgroup",
            "/sys/fs/cgroup/portmap-no-such-cgroup",
            "no such directory",
        ],
    );
}

#[test]
fn list_without_a_daemon_says_so() {
    require_root();
    let out = std::process::Command::new(bin_path("portmap"))
        .args([
            "list",
            "--control-socket",
            "/run/portmap-tests/nobody-here.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nobody-here.sock") && stderr.contains("is `portmap run` running?"),
        "{stderr}"
    );
}
