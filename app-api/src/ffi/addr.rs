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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::abi::*;

    #[test]
    fn socket_addrs_round_trip() {
        let addrs: [SocketAddr; 4] = [
            "192.0.2.7:8080".parse().expect("v4"),
            "0.0.0.0:0".parse().expect("v4"),
            "[2001:db8::1]:443".parse().expect("v6"),
            "[fe80::1%3]:65535".parse().expect("v6 with scope"),
        ];
        for addr in addrs {
            let abi = socket_addr_to_abi(Some(addr));
            assert_eq!(socket_addr_from_abi(&abi), Some(addr));
        }
        let v4 = socket_addr_to_abi(Some("10.1.2.3:9".parse().expect("v4")));
        assert_eq!(
            (v4.family, v4.port, &v4.ip[..4]),
            (ADDR_V4, 9, &[10, 1, 2, 3][..])
        );
        let v6 = socket_addr_to_abi(Some("[fe80::1%3]:1".parse().expect("v6")));
        assert_eq!((v6.family, v6.scope_id), (ADDR_V6, 3));

        let none = socket_addr_to_abi(None);
        assert_eq!(none.family, ADDR_NONE);
        assert_eq!(socket_addr_from_abi(&none), None);
        let unknown = AbiSocketAddr { family: 9, ..none };
        assert_eq!(socket_addr_from_abi(&unknown), None);
    }
}
