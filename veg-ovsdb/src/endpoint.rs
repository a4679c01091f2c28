//! Where the database is: `unix:PATH` or `tcp:IP:PORT`, as ovn-nbctl's --db takes it.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use anyhow::bail;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Endpoint> {
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(address) = s.strip_prefix("tcp:")
            && let Ok(address) = address.parse()
        {
            return Ok(Endpoint::Tcp(address));
        }
        bail!(
            "invalid database address {s:?}: expected unix:PATH or tcp:IP:PORT (e.g. tcp:127.0.0.1:6641)"
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_explains_the_rest() {
        assert_eq!(
            "unix:/run/ovn/nb.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/ovn/nb.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6641".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:6641".parse().unwrap())
        );
        assert_eq!(
            "tcp:[::1]:6641".parse::<Endpoint>().unwrap().to_string(),
            "tcp:[::1]:6641"
        );
        for bad in [
            "",
            "unix:",
            "tcp:host:6641",
            "ssl:1.2.3.4:6641",
            "/run/nb.sock",
        ] {
            assert!(
                bad.parse::<Endpoint>()
                    .unwrap_err()
                    .to_string()
                    .contains("expected unix:PATH or tcp:IP:PORT")
            );
        }
    }
}
