//! What the Northbound transactions cost, for the controller's metrics: how many succeeded and failed, how long
//! the database took to answer, and how many operations each carried. Process-wide, as the connection is.

use std::{
    fmt::Write as _,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use crate::metrics_text::{Histogram, SECONDS_BUCKETS, SIZE_BUCKETS, family};

struct Transactions {
    succeeded: u64,
    failed: u64,
    seconds: Histogram,
    operations: Histogram,
}

static TRANSACTIONS: LazyLock<Mutex<Transactions>> = LazyLock::new(|| {
    Mutex::new(Transactions {
        succeeded: 0,
        failed: 0,
        seconds: Histogram::new(SECONDS_BUCKETS),
        operations: Histogram::new(SIZE_BUCKETS),
    })
});

/// One transaction: how long the database took to answer it, its operations, and whether it committed.
pub fn record(elapsed: Duration, operations: usize, committed: bool) {
    let mut transactions = TRANSACTIONS.lock().unwrap();
    if committed {
        transactions.succeeded += 1;
    } else {
        transactions.failed += 1;
    }
    transactions.seconds.observe(elapsed.as_secs_f64());
    transactions.operations.observe(operations as f64);
}

pub fn render(out: &mut String) {
    let transactions = TRANSACTIONS.lock().unwrap();
    family(
        out,
        "veg_controller_ovn_transactions_total",
        "counter",
        "Transactions sent to the OVN Northbound database, by result (failure: refused or unanswered).",
    );
    let _ = writeln!(
        out,
        "veg_controller_ovn_transactions_total{{result=\"success\"}} {}",
        transactions.succeeded
    );
    let _ = writeln!(
        out,
        "veg_controller_ovn_transactions_total{{result=\"failure\"}} {}",
        transactions.failed
    );
    transactions.seconds.render(
        out,
        "veg_controller_ovn_transaction_duration_seconds",
        "How long the Northbound database took to answer a transaction.",
    );
    transactions.operations.render(
        out,
        "veg_controller_ovn_transaction_operations",
        "Operations (row inserts, updates, deletes) in a transaction.",
    );
}
