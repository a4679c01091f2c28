//! `veg flows --watch`: a gateway's translation records as its agent writes them, from its records socket.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context as _, anyhow};

use crate::{
    datapath::records::TranslationRecord,
    gateway::{agent::RUN_DIR, records::watch_socket},
};

/// Print records until the agent stops: as JSON lines with `json`, else one row each.
pub fn watch(name: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let path = watch_socket(Path::new(RUN_DIR), name);
    let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => anyhow!(
            "no translation records to watch for gateway {name}: nothing listens on {}. Is its agent running, \
             with --flow-records (flowRecords in a settings file)?",
            path.display()
        ),
        _ => anyhow!(e).context(format!("connecting to {}", path.display())),
    })?;
    if !json {
        writeln!(
            out,
            "{:<24} {:<7} {:<5} {:<22} {:<22} {:<22} DETAIL",
            "TIME", "EVENT", "PROTO", "ORIGINAL", "TRANSLATED", "REMOTE"
        )?;
        out.flush()?;
    }
    for line in BufReader::new(stream).lines() {
        let line = line.context("reading from the agent's records socket")?;
        if json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", row(&line))?;
        }
        out.flush()?;
    }
    eprintln!("the agent of gateway {name} stopped");
    Ok(())
}

/// One record as a table row; the agent's note that this watcher fell behind as a sentence.
fn row(line: &str) -> String {
    let Ok(record) = serde_json::from_str::<TranslationRecord>(line) else {
        return match serde_json::from_str::<serde_json::Value>(line) {
            Ok(note) if note["event"] == "missed" => format!(
                "(missed {} records: this watcher fell behind; the agent's own output has them all)",
                note["records"]
            ),
            _ => line.to_owned(),
        };
    };
    let detail = match &record.reason {
        Some(reason) => format!(
            "{reason}, out {} packets {} bytes, in {} packets {} bytes",
            record.packets_out.unwrap_or(0),
            record.bytes_out.unwrap_or(0),
            record.packets_in.unwrap_or(0),
            record.bytes_in.unwrap_or(0)
        ),
        None => String::new(),
    };
    format!(
        "{:<24} {:<7} {:<5} {:<22} {:<22} {:<22} {detail}",
        record.time,
        record.event,
        record.protocol,
        record.original_source.to_string(),
        record.translated_source.to_string(),
        record.remote.to_string()
    )
}

#[cfg(test)]
mod tests {
    use super::row;

    #[test]
    fn a_row_says_what_ended_and_why() {
        let line = r#"{"event":"ended","time":"2026-12-01T10:00:00.000Z","protocol":"udp","original_source":"10.0.1.5:4000","translated_source":"192.0.2.10:4000","remote":"198.51.100.7:53","gateway":"g","instance":"i","reason":"timeout","started":"2026-12-01T09:59:00.000Z","packets_out":2,"bytes_out":120,"packets_in":1,"bytes_in":80}"#;
        let row = row(line);
        assert!(row.contains("ended"), "{row}");
        assert!(row.contains("10.0.1.5:4000"), "{row}");
        assert!(
            row.contains("timeout, out 2 packets 120 bytes, in 1 packets 80 bytes"),
            "{row}"
        );
    }

    #[test]
    fn a_missed_note_is_a_sentence() {
        let row = row(r#"{"event":"missed","records":12}"#);
        assert!(row.contains("missed 12 records"), "{row}");
    }
}
