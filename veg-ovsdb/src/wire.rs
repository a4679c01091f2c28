//! JSON-RPC framing: OVSDB sends JSON objects back to back on the stream, with no delimiter, so messages are cut
//! out of the byte stream as they complete.

use serde_json::Value;

#[derive(Default)]
pub struct MessageReader {
    buffer: Vec<u8>,
}

impl MessageReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The complete messages received so far; a partial one stays buffered.
    pub fn messages(&mut self) -> Result<Vec<Value>, serde_json::Error> {
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
        let mut messages = Vec::new();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(message)) => {
                    messages.push(message);
                    consumed = stream.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        self.buffer.drain(..consumed);
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_messages_out_of_a_stream_in_any_pieces() {
        let stream = br#"{"id":1,"result":["a"],"error":null}{"method":"echo","params":[],"id":"echo"}{"id":2,"#;
        for split in [1, 10, 37, stream.len()] {
            let mut reader = MessageReader::default();
            let mut all = Vec::new();
            for chunk in stream.chunks(split) {
                reader.push(chunk);
                all.extend(reader.messages().unwrap());
            }
            assert_eq!(all.len(), 2, "split {split}");
            assert_eq!(all[1]["method"], "echo");
            reader.push(br#""result":{},"error":null}"#);
            assert_eq!(reader.messages().unwrap()[0]["id"], 2);
        }
        let mut reader = MessageReader::default();
        reader.push(b"{\"id\": nonsense}");
        assert!(reader.messages().is_err());
    }
}
