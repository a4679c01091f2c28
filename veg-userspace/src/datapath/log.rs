//! The datapath's log lines (aya-log): which the programs write, set when they load, and the agent's task that
//! hands them to its own log.

use std::str::FromStr;

use anyhow::bail;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// How much the programs log (`--datapath-log`): nothing by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DatapathLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl FromStr for DatapathLog {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<DatapathLog> {
        Ok(match text {
            "off" => DatapathLog::Off,
            "error" => DatapathLog::Error,
            "warn" => DatapathLog::Warn,
            "info" => DatapathLog::Info,
            "debug" => DatapathLog::Debug,
            "trace" => DatapathLog::Trace,
            _ => bail!(
                "invalid --datapath-log {text:?}: expected off, error, warn, info, debug or trace"
            ),
        })
    }
}

impl DatapathLog {
    /// The value of the programs' AYA_LOG_LEVEL: lines of this level and more severe are written, none at 0.
    /// aya-log's own default is every line, so the loader always sets it.
    pub fn aya_level(self) -> u8 {
        match self {
            DatapathLog::Off => 0,
            DatapathLog::Error => 1,
            DatapathLog::Warn => 2,
            DatapathLog::Info => 3,
            DatapathLog::Debug => 4,
            DatapathLog::Trace => 5,
        }
    }
}

/// The programs' lines, read from their ring as they come and logged by the agent (target `veg_ebpf`), until the
/// task is dropped.
pub async fn forward(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring's descriptor, which stays open and the same while the AsyncFd owns it.
    let Ok(mut ring) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        tracing::warn!("cannot watch the datapath's log ring: its lines are lost");
        return;
    };
    while let Ok(mut guard) = ring.readable_mut().await {
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_off_writes_nothing() {
        assert_eq!("warn".parse::<DatapathLog>().unwrap(), DatapathLog::Warn);
        assert_eq!(DatapathLog::default().aya_level(), 0);
        assert_eq!(DatapathLog::Trace.aya_level(), 5);
        let error = "loud".parse::<DatapathLog>().unwrap_err().to_string();
        assert!(error.contains("expected off, error, warn"), "{error}");
    }
}
