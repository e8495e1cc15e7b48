use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(s: &str) -> Cidrs {
    Cidrs::parse(&[s.to_string()]).unwrap()
}

#[test]
fn keys_group_ipv6_by_prefix_and_keep_families_apart() {
    let k = |s: &str, p| AddrKey::new(ip(s), p);
    assert_eq!(k("2001:db8:0:1::1", 64), k("2001:db8:0:1:dead::beef", 64));
    assert_ne!(k("2001:db8:0:1::1", 64), k("2001:db8:0:2::1", 64));
    assert_eq!(k("2001:db8:0:1::1", 48), k("2001:db8:0:2::1", 48));
    assert_eq!(k("::ffff:10.1.2.3", 64), k("10.1.2.3", 64));
    assert_ne!(k("10.1.2.3", 64), k("10.1.2.4", 64));
    // ::1 and 0.0.0.1 and ::/64 do not meet.
    assert_ne!(k("::1", 64), k("0.0.0.1", 64));
    assert_ne!(k("::1", 64), k("0.0.0.0", 64));
}

#[test]
fn cidrs_parse_and_match() {
    let t = Cidrs::parse(&["10.0.0.0/8, 192.168.1.7".into(), "fd00::/8".into()]).unwrap();
    assert!(t.contains(ip("10.200.0.1")));
    assert!(t.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped counts as IPv4");
    assert!(t.contains(ip("192.168.1.7")));
    assert!(!t.contains(ip("192.168.1.8")));
    assert!(t.contains(ip("fd12::1")));
    assert!(!t.contains(ip("2001:db8::1")));
    assert!(nets("0.0.0.0/0").contains(ip("203.0.113.1")));
    assert!(!nets("0.0.0.0/0").contains(ip("2001:db8::1")), "an IPv4 network holds no IPv6 address");
    for bad in ["10.0.0.1/8", "10.0.0.0/33", "nonsense", "::1/129"] {
        assert!(Cidrs::parse(&[bad.into()]).is_err(), "{bad}");
    }
}

#[test]
fn forwarded_for_takes_the_right_most_untrusted_address() {
    let trusted = nets("10.0.0.0/8");
    let walk = |xff: &str| forwarded_client(xff.rsplit(','), None, &trusted);
    // NGINX appended the client; whatever the client wrote before it is not believed.
    assert_eq!(walk("6.6.6.6, 203.0.113.9"), Some(ip("203.0.113.9")));
    // Two trusted hops in front of the client.
    assert_eq!(walk("203.0.113.9, 10.0.0.2, 10.0.0.3"), Some(ip("203.0.113.9")));
    // Every address trusted: the left-most.
    assert_eq!(walk("10.0.0.5, 10.0.0.2"), Some(ip("10.0.0.5")));
    // Garbage stops the walk at the nearest hop that vouched for it.
    assert_eq!(walk("203.0.113.9, unknown, 10.0.0.2"), Some(ip("10.0.0.2")));
    assert_eq!(walk("garbage"), None);
    // Ports and brackets, as some proxies write them.
    assert_eq!(walk("203.0.113.9:5555"), Some(ip("203.0.113.9")));
    assert_eq!(walk("[2001:db8::9]:5555"), Some(ip("2001:db8::9")));
    assert_eq!(walk("[2001:db8::9]"), Some(ip("2001:db8::9")));
    // X-Real-IP only without X-Forwarded-For.
    assert_eq!(forwarded_client(std::iter::empty(), Some("198.51.100.4"), &trusted), Some(ip("198.51.100.4")));
    assert_eq!(forwarded_client("203.0.113.9".rsplit(','), Some("198.51.100.4"), &trusted), Some(ip("203.0.113.9")));
    assert_eq!(forwarded_client(std::iter::empty(), None, &trusted), None);
}

#[test]
fn settings_are_checked() {
    let ok = PeerConfig::new(10, 5.0, 10, 64, &[], false).unwrap();
    assert!(ok.limited());
    assert!(!PeerConfig::new(0, 0.0, 10, 64, &[], false).unwrap().limited());
    let e = PeerConfig::new(10, 5.0, 0, 64, &[], false).unwrap_err();
    assert!(e.contains("--handshake-burst-per-ip"), "{e}");
    let e = PeerConfig::new(10, -1.0, 1, 64, &[], false).unwrap_err();
    assert!(e.contains("--max-handshakes-per-ip-per-second"), "{e}");
    let e = PeerConfig::new(10, 5.0, 1, 80, &[], false).unwrap_err();
    assert!(e.contains("--ipv6-prefix-len"), "{e}");
    let e = PeerConfig::new(10, 5.0, 1, 64, &[], true).unwrap_err();
    assert!(e.contains("--trusted-proxies"), "{e}");
    let e = PeerConfig::new(10, 5.0, 1, 64, &["10.0.0.1/8".into()], false).unwrap_err();
    assert!(e.contains("--trusted-proxies"), "{e}");
}
