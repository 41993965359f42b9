//! The standard topology (`portmap_testkit::topo`), dual-stack: client
//! namespace → node namespace (portmap runs here, on its client-facing veth)
//! → one namespace per backend.
//!
//! ```text
//!  client            node                        backend i
//!  198.18.0.2  ───   198.18.0.1  (eth-c)
//!  2001:db8::2       2001:db8::1
//!                    198.19.i.1  (eth-bi)  ───   198.19.i.2
//!                    2001:db8:1:i::1             2001:db8:1:i::2
//! ```
//! Extra node addresses on the client side: 198.18.0.3 and 2001:db8::3.
//!
//! Every veth keeps the offloads the kernel gives it ([`Offloads::Default`]),
//! as containers' veths do, unless [`LinkOptions`] say otherwise. GRO is on
//! at the client's end, so frames XDP sends back to it (ICMP rejects) are
//! received, as by a NIC.

use anyhow::Result;
use portmap_testkit::topo::Options;
pub use portmap_testkit::topo::{
    CLIENT_V4, CLIENT_V6, LinkOptions, NODE_IFACE, NODE_V4, NODE_V4_ALT, NODE_V6, NODE_V6_ALT,
    Offloads, addr, backend_v4, backend_v6, link, node_backend_if,
};

use crate::unique_name;

/// A topology whose namespaces are named after the test, and which removes
/// a dataplane a test left pinned before they go.
pub struct Topology(portmap_testkit::topo::Topology);

impl std::ops::Deref for Topology {
    type Target = portmap_testkit::topo::Topology;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Topology {
    /// `tag` goes into the namespace names (keep it short and unique per
    /// test). Links keep the kernel's default offloads and MTU.
    pub fn new(tag: &str, backends: usize) -> Result<Self> {
        Self::with(tag, backends, LinkOptions::default())
    }

    /// As [`Topology::new`], with `options` applied to every link.
    pub fn with(tag: &str, backends: usize, links: LinkOptions) -> Result<Self> {
        crate::require_root();
        let options = Options {
            backends,
            links,
            dual_stack: true,
            gro_at_backends: false,
            client_link_macs: None,
        };
        portmap_testkit::topo::Topology::build(
            |role| unique_name(&format!("{tag}-{role}")),
            &options,
        )
        .map(Self)
    }
}

impl Drop for Topology {
    /// A test that fails between stopping one daemon and starting the next
    /// may leave a kept dataplane pinned; nothing outlives the topology.
    fn drop(&mut self) {
        crate::daemon::reset_pins(&crate::daemon::pin_dir(&self.node));
    }
}
