//! Socket addresses across the boundary.

use crate::abi::{ADDR_NONE, ADDR_V4, ADDR_V6, AbiSocketAddr};

/// Converts a socket address for the ABI.
#[inline]
pub fn socket_addr_to_abi(addr: Option<std::net::SocketAddr>) -> AbiSocketAddr {
    let mut out = AbiSocketAddr {
        family: ADDR_NONE,
        port: 0,
        ip: [0; 16],
        scope_id: 0,
    };
    match addr {
        Some(std::net::SocketAddr::V4(v4)) => {
            out.family = ADDR_V4;
            out.port = v4.port();
            out.ip[..4].copy_from_slice(&v4.ip().octets());
        }
        Some(std::net::SocketAddr::V6(v6)) => {
            out.family = ADDR_V6;
            out.port = v6.port();
            out.ip = v6.ip().octets();
            out.scope_id = v6.scope_id();
        }
        None => {}
    }
    out
}

/// Reads a socket address from the ABI (`None` for [`ADDR_NONE`] or an unknown family).
pub fn socket_addr_from_abi(addr: &AbiSocketAddr) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match addr.family {
        ADDR_V4 => {
            let ip = Ipv4Addr::new(addr.ip[0], addr.ip[1], addr.ip[2], addr.ip[3]);
            Some(SocketAddrV4::new(ip, addr.port).into())
        }
        ADDR_V6 => {
            let ip = Ipv6Addr::from(addr.ip);
            Some(SocketAddrV6::new(ip, addr.port, 0, addr.scope_id).into())
        }
        _ => None,
    }
}
