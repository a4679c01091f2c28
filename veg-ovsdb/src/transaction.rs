//! Checking a transaction's result operation by operation (RFC 7047 section 4.1.3): the result has one element per
//! operation, the failed one carries "error", and a failure at commit (a unique index or a reference violated) is
//! reported in one extra element after them. The server applies nothing when any of them failed.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionError {
    /// Index of the failed operation; None when the commit itself failed.
    pub operation: Option<usize>,
    pub op: String,
    pub table: String,
    pub error: String,
    pub details: String,
}

impl fmt::Display for TransactionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operation {
            Some(i) => write!(f, "operation {i} ({} on table {})", self.op, self.table)?,
            None => write!(f, "the commit")?,
        }
        write!(f, " failed: {}", self.error)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        write!(f, "; nothing was applied")
    }
}

impl std::error::Error for TransactionError {}

pub fn check(operations: &[Value], result: &Value) -> Result<Vec<Value>, TransactionError> {
    let results = result.as_array().cloned().unwrap_or_default();
    for (i, r) in results.iter().enumerate() {
        if let Some(error) = r["error"].as_str() {
            let op = operations.get(i);
            return Err(TransactionError {
                operation: op.map(|_| i),
                op: op
                    .and_then(|o| o["op"].as_str())
                    .unwrap_or("commit")
                    .to_owned(),
                table: op
                    .and_then(|o| o["table"].as_str())
                    .unwrap_or("-")
                    .to_owned(),
                error: error.to_owned(),
                details: r["details"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    if results.len() < operations.len() {
        return Err(TransactionError {
            operation: Some(results.len()),
            op: "?".into(),
            table: "?".into(),
            error: "the server answered fewer results than operations".into(),
            details: String::new(),
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_the_failed_operation_or_the_commit() {
        let ops = vec![
            json!({"op": "insert", "table": "BFD"}),
            json!({"op": "mutate", "table": "Logical_Router"}),
        ];
        let failed = json!([{"uuid": ["uuid", "x"]}, {"error": "constraint violation", "details": "no such row"}]);
        let e = check(&ops, &failed).unwrap_err();
        assert_eq!(e.operation, Some(1));
        assert_eq!(
            e.to_string(),
            "operation 1 (mutate on table Logical_Router) failed: constraint violation: no such row; nothing was applied"
        );
        let commit = json!([{"uuid": ["uuid", "x"]}, {}, {"error": "constraint violation", "details": "duplicate"}]);
        assert!(
            check(&ops, &commit)
                .unwrap_err()
                .to_string()
                .starts_with("the commit failed: constraint violation")
        );
        assert_eq!(check(&ops, &json!([{}, {"count": 1}])).unwrap().len(), 2);
    }
}
