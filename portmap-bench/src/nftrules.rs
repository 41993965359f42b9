//! kube-proxy's nftables-mode table for the Services of `rules`, with and
//! without masquerading, its one-Service change, and the static masquerade
//! of `forward` towards remote backends.

use std::{fmt::Write as _, net::Ipv4Addr};

use super::{
    rules::{CLUSTER_CIDR, MASQ_MARK, Masq, NAMESPACE, Proto, SERVICE_PORT, Services, Svc, hash16},
    topo::BACKEND_PORT,
};

const NFT_TABLE: &str = "ip kube-proxy";

fn nft_service_chain(s: &Svc, p: Proto) -> String {
    let id = format!("{NAMESPACE}/{}/{}/{}", s.name, p.lower(), p.lower());
    format!("service-{}-{id}", &hash16(&id)[..8])
}

fn nft_endpoint_chain(s: &Svc, p: Proto, ep: Ipv4Addr) -> String {
    let id = format!(
        "{NAMESPACE}/{}/{}/{}__{ep}/{BACKEND_PORT}",
        s.name,
        p.lower(),
        p.lower()
    );
    format!("endpoint-{}-{id}", &hash16(&id)[..8])
}

fn nft_service_rules(s: &Svc, p: Proto, masq: Masq, out: &mut String) {
    let chain = nft_service_chain(s, p);
    if masq == Masq::Yes {
        let _ = writeln!(
            out,
            "add rule {NFT_TABLE} {chain} ip daddr {} {} dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} \
             jump mark-for-masquerade",
            s.vip,
            p.lower()
        );
    }
    let targets: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(s, p, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {NFT_TABLE} {chain} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        targets.join(" , ")
    );
}

fn nft_endpoint(
    s: &Svc,
    p: Proto,
    ep: Ipv4Addr,
    masq: Masq,
    chains: &mut String,
    rules: &mut String,
) {
    let chain = nft_endpoint_chain(s, p, ep);
    let _ = writeln!(chains, "add chain {NFT_TABLE} {chain}");
    if masq == Masq::Yes {
        let _ = writeln!(
            rules,
            "add rule {NFT_TABLE} {chain} ip saddr {ep} jump mark-for-masquerade"
        );
    }
    let _ = writeln!(
        rules,
        "add rule {NFT_TABLE} {chain} meta l4proto {} dnat to {ep}:{BACKEND_PORT}",
        p.lower()
    );
}

/// kube-proxy's nftables-mode table, as one `nft -f` transaction.
pub fn nftables(services: &Services) -> String {
    nftables_layout(services, Masq::No)
}

/// The same with masquerading ([`Masq`]).
pub fn nftables_masq(services: &Services) -> String {
    nftables_layout(services, Masq::Yes)
}

fn nftables_layout(services: &Services, masq: Masq) -> String {
    let mut chains = format!(
        "add table {NFT_TABLE}\n\
         add map {NFT_TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         add chain {NFT_TABLE} services\n\
         add chain {NFT_TABLE} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n"
    );
    let mut rules = format!(
        "add rule {NFT_TABLE} nat-prerouting jump services\n\
         add rule {NFT_TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n"
    );
    if masq == Masq::Yes {
        let _ = write!(
            chains,
            "add chain {NFT_TABLE} mark-for-masquerade\n\
             add chain {NFT_TABLE} masquerading\n\
             add chain {NFT_TABLE} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}\n"
        );
        let _ = write!(
            rules,
            "add rule {NFT_TABLE} nat-postrouting jump masquerading\n\
             add rule {NFT_TABLE} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
             add rule {NFT_TABLE} masquerading mark and {MASQ_MARK} == 0 return\n\
             add rule {NFT_TABLE} masquerading mark set mark xor {MASQ_MARK}\n\
             add rule {NFT_TABLE} masquerading masquerade fully-random\n"
        );
    }
    let mut elements = String::new();
    for s in services.all() {
        for &p in &s.protos {
            let chain = nft_service_chain(s, p);
            let _ = writeln!(chains, "add chain {NFT_TABLE} {chain}");
            for ep in &s.endpoints {
                nft_endpoint(s, p, *ep, masq, &mut chains, &mut rules);
            }
            nft_service_rules(s, p, masq, &mut rules);
            let _ = writeln!(
                elements,
                "add element {NFT_TABLE} service-ips {{ {} . {} . {SERVICE_PORT} : goto {chain} }}",
                s.vip,
                p.lower()
            );
        }
    }
    chains + &rules + &elements
}

/// The transaction kube-proxy's nftables mode makes when one endpoint of the
/// first Service is replaced: the new endpoint's chain, the Service chain
/// rewritten, the old endpoint's chain deleted.
pub fn nftables_change(before: &Services) -> String {
    let after = before.with_one_changed();
    let (old, new) = (&before.list[0], &after.list[0]);
    let mut chains = String::new();
    let mut rules = String::new();
    for &p in &new.protos {
        let ep = new.endpoints[0];
        nft_endpoint(new, p, ep, Masq::No, &mut chains, &mut rules);
        let _ = writeln!(
            chains,
            "flush chain {NFT_TABLE} {}",
            nft_endpoint_chain(new, p, ep)
        );
        let _ = writeln!(
            rules,
            "flush chain {NFT_TABLE} {}",
            nft_service_chain(new, p)
        );
        nft_service_rules(new, p, Masq::No, &mut rules);
        let _ = writeln!(
            rules,
            "delete chain {NFT_TABLE} {}",
            nft_endpoint_chain(old, p, old.endpoints[0])
        );
    }
    chains + &rules
}

/// Removes the kube-proxy table.
pub fn nftables_teardown() -> String {
    format!("delete table {NFT_TABLE}\n")
}

const STATIC_MASQ_TABLE: &str = "ip bench-masq";

/// A static masquerade of everything leaving through `oif`, as a plain NAT
/// router (or Docker's `MASQUERADE` of its bridge) has: the reference of
/// the remote-backend cell, no Service translation.
pub fn static_masquerade(oif: &str) -> String {
    format!(
        "add table {STATIC_MASQ_TABLE}\n\
         add chain {STATIC_MASQ_TABLE} postrouting {{ type nat hook postrouting priority srcnat ; }}\n\
         add rule {STATIC_MASQ_TABLE} postrouting oifname \"{oif}\" masquerade\n"
    )
}

pub fn static_masquerade_teardown() -> String {
    format!("delete table {STATIC_MASQ_TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::REPLACEMENT_ENDPOINT;

    #[test]
    fn nftables_layout() {
        let s = Services::new(2).unwrap();
        let text = nftables(&s);
        assert!(text.contains("numgen random mod 10 vmap { 0 : goto endpoint-"));
        assert!(text.contains("198.19.64.1 . udp . 80 : goto service-"));
        let change = nftables_change(&s);
        assert!(change.contains(&format!("dnat to {REPLACEMENT_ENDPOINT}:8080")));
        assert!(change.contains("delete chain ip kube-proxy endpoint-"));
    }

    #[test]
    fn masquerading_layout_marks_and_masquerades() {
        let s = Services::new(2).unwrap().with_bulk();
        let nft = nftables_masq(&s);
        assert!(nft.contains("type nat hook postrouting priority srcnat"));
        assert!(nft.contains("add rule ip kube-proxy masquerading masquerade fully-random"));
        assert!(nft.contains(
            "ip daddr 198.19.64.1 udp dport 80 ip saddr != 198.19.0.0/16 jump mark-for-masquerade"
        ));
        assert!(nft.contains("ip saddr 198.19.0.2 jump mark-for-masquerade"));
        assert!(!nftables(&s).contains("masquerade"));
        assert!(nftables(&s).contains("198.19.63.80 . tcp . 80 : goto service-"));
        assert!(static_masquerade("eth-r").contains("oifname \"eth-r\" masquerade"));
    }
}
