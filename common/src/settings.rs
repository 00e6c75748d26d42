//! Parsers for values of `AIHUMMER_*` variables. They return the reason a value is refused;
//! each binary wraps it in its own error naming the variable.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// `:PORT` means every interface; `HOST:PORT` may name a host, which is resolved.
pub fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    let full = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_string(),
    };
    if let Ok(addr) = full.parse() {
        return Ok(addr);
    }
    full.to_socket_addrs()
        .map_err(|err| err.to_string())?
        .next()
        .ok_or_else(|| "the host resolves to no address".to_string())
}

/// Accepts humantime forms (`30s`, `1m 30s`, `250ms`) and bare seconds (`30`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_port_only_host_and_ipv6_forms() {
        assert_eq!(
            parse_listen_addr(":9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert_eq!(parse_listen_addr("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(
            parse_listen_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(
            parse_listen_addr("localhost:81")
                .unwrap()
                .ip()
                .is_loopback()
        );
        assert!(parse_listen_addr("nonsense").is_err());
        assert!(parse_listen_addr(":99999").is_err());
    }

    #[test]
    fn durations_take_humantime_and_bare_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }
}
