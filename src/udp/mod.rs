//! UDP ports: plain, connected and multicast, and adopted sockets.

pub(crate) mod addr;
pub(crate) mod arrival;
mod multicast;
pub(crate) mod options;
pub(crate) mod port;
pub(crate) mod socket;
pub(crate) mod transport;

pub use addr::{Interface, IntoInterface, IpLiteral, PeerAddr};
pub use arrival::{Arrival, WriteOptions};
pub use options::ListenOptions;
pub use port::PortStats;
pub use transport::UdpTransport;
#[cfg(test)]
mod seam_tests;
