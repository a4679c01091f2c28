//! A local copy of the tables a client monitors, kept current from `update2` notifications (RFC 7047 with Open
//! vSwitch's monitor_cond extension). A `modify` carries a diff whose meaning depends on the column's type: a
//! scalar or an optional value (a set of at most one) is replaced, a larger set's listed elements are toggled, a
//! map's listed keys are inserted, updated or deleted. So the replica reads the column types from the schema.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    Scalar,
    /// A set of at most one element: travels like a set, but a modify carries the new value.
    Optional,
    Set,
    Map,
}

/// Column kinds per table, from `get_schema`.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    tables: HashMap<String, HashMap<String, ColumnKind>>,
}

impl Schema {
    pub fn from_json(schema: &Value) -> Schema {
        let mut tables = HashMap::new();
        for (table, definition) in schema["tables"].as_object().into_iter().flatten() {
            let columns = definition["columns"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, column)| (name.clone(), kind(&column["type"])))
                .collect();
            tables.insert(table.clone(), columns);
        }
        Schema { tables }
    }

    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.tables
            .get(table)
            .is_some_and(|t| t.contains_key(column))
    }

    fn kind(&self, table: &str, column: &str) -> ColumnKind {
        self.tables
            .get(table)
            .and_then(|t| t.get(column))
            .copied()
            .unwrap_or(ColumnKind::Scalar)
    }
}

fn kind(column_type: &Value) -> ColumnKind {
    if !column_type["value"].is_null() {
        return ColumnKind::Map;
    }
    let max = &column_type["max"];
    if max == "unlimited" || max.as_u64().is_some_and(|m| m > 1) {
        ColumnKind::Set
    } else if column_type["min"] == 0 {
        ColumnKind::Optional
    } else {
        ColumnKind::Scalar
    }
}

/// The elements of a set datum (a bare atom is a one-element set).
pub fn set_elements(datum: &Value) -> Vec<Value> {
    match datum.as_array() {
        Some(a) if a.len() == 2 && a[0] == "set" => a[1].as_array().cloned().unwrap_or_default(),
        _ if datum.is_null() => Vec::new(),
        _ => vec![datum.clone()],
    }
}

/// The pairs of a map datum, by key.
pub fn map_pairs(datum: &Value) -> BTreeMap<String, (Value, Value)> {
    let pairs = datum
        .as_array()
        .filter(|a| a.len() == 2 && a[0] == "map")
        .and_then(|a| a[1].as_array());
    pairs
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].to_string(), (p.get(0)?.clone(), p.get(1)?.clone()))))
        .collect()
}

fn set_datum(elements: Vec<Value>) -> Value {
    json!(["set", elements])
}

fn map_datum(pairs: BTreeMap<String, (Value, Value)>) -> Value {
    json!([
        "map",
        pairs
            .into_values()
            .map(|(k, v)| json!([k, v]))
            .collect::<Vec<_>>()
    ])
}

pub type Row = serde_json::Map<String, Value>;

/// A column of a replicated row; null when the server left it out (update2 omits default values).
pub fn column<'a>(row: &'a Row, name: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    row.get(name).unwrap_or(&NULL)
}

#[derive(Clone, Debug, Default)]
pub struct Replica {
    schema: Schema,
    /// table -> row uuid -> columns (sets and maps in canonical ["set", ...] / ["map", ...] form).
    tables: HashMap<String, HashMap<String, Row>>,
}

impl Replica {
    pub fn new(schema: Schema) -> Replica {
        Replica {
            schema,
            tables: HashMap::new(),
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn clear(&mut self) {
        self.tables.clear();
    }

    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(table).into_iter().flatten()
    }

    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    fn canonical(&self, table: &str, column: &str, datum: &Value) -> Value {
        match self.schema.kind(table, column) {
            ColumnKind::Scalar => datum.clone(),
            ColumnKind::Optional | ColumnKind::Set => set_datum(set_elements(datum)),
            ColumnKind::Map => map_datum(map_pairs(datum)),
        }
    }

    /// A datum in comparable form: sets and maps sorted, an optional scalar as a set.
    pub fn normalized(&self, table: &str, column: &str, datum: &Value) -> Value {
        match self.schema.kind(table, column) {
            ColumnKind::Scalar => datum.clone(),
            ColumnKind::Optional | ColumnKind::Set => {
                let mut elements = set_elements(datum);
                elements.sort_by_key(|e| e.to_string());
                set_datum(elements)
            }
            ColumnKind::Map => map_datum(map_pairs(datum)),
        }
    }

    /// Apply a `table-updates2` object (the result of monitor_cond, or an update2 notification's second param).
    pub fn apply(&mut self, updates: &Value) {
        for (table, rows) in updates.as_object().into_iter().flatten() {
            for (uuid, update) in rows.as_object().into_iter().flatten() {
                self.apply_row(table, uuid, update);
            }
        }
    }

    fn apply_row(&mut self, table: &str, uuid: &str, update: &Value) {
        let new_row = update.get("initial").or_else(|| update.get("insert"));
        if let Some(columns) = new_row {
            let row: Row = columns
                .as_object()
                .into_iter()
                .flatten()
                .map(|(column, datum)| (column.clone(), self.canonical(table, column, datum)))
                .collect();
            self.tables
                .entry(table.to_owned())
                .or_default()
                .insert(uuid.to_owned(), row);
        } else if let Some(diff) = update.get("modify") {
            let kinds: Vec<(String, ColumnKind, Value)> = diff
                .as_object()
                .into_iter()
                .flatten()
                .map(|(column, change)| {
                    (
                        column.clone(),
                        self.schema.kind(table, column),
                        change.clone(),
                    )
                })
                .collect();
            let Some(row) = self.tables.get_mut(table).and_then(|t| t.get_mut(uuid)) else {
                return;
            };
            for (column, kind, change) in kinds {
                let current = row.get(&column).cloned().unwrap_or(Value::Null);
                let updated = match kind {
                    ColumnKind::Scalar => change,
                    ColumnKind::Optional => set_datum(set_elements(&change)),
                    ColumnKind::Set => {
                        let mut elements = set_elements(&current);
                        for element in set_elements(&change) {
                            match elements.iter().position(|e| *e == element) {
                                Some(i) => drop(elements.remove(i)),
                                None => elements.push(element),
                            }
                        }
                        set_datum(elements)
                    }
                    ColumnKind::Map => {
                        let mut pairs = map_pairs(&current);
                        for (key, (k, v)) in map_pairs(&change) {
                            match pairs.get(&key) {
                                Some((_, existing)) if *existing == v => drop(pairs.remove(&key)),
                                _ => drop(pairs.insert(key, (k, v))),
                            }
                        }
                        map_datum(pairs)
                    }
                };
                row.insert(column, updated);
            }
        } else if update.get("delete").is_some()
            && let Some(rows) = self.tables.get_mut(table)
        {
            rows.remove(uuid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::from_json(&json!({ "tables": { "BFD": { "columns": {
            "dst_ip": { "type": "string" },
            "status": { "type": { "key": "string", "min": 0, "max": 1 } },
            "external_ids": { "type": { "key": "string", "value": "string", "min": 0, "max": "unlimited" } },
            "nexthops": { "type": { "key": "string", "min": 0, "max": "unlimited" } },
        }}}}))
    }

    #[test]
    fn update2_diffs_apply_by_column_kind() {
        let mut replica = Replica::new(schema());
        replica.apply(&json!({ "BFD": { "u1": { "initial": {
            "dst_ip": "10.0.0.2", "status": "down", "external_ids": ["map", [["af", "4"], ["vendor", "kube-ovn"]]],
            "nexthops": "10.0.0.2" } } } }));
        let row = replica.row("BFD", "u1").unwrap();
        assert_eq!(row["status"], json!(["set", ["down"]]));
        assert_eq!(row["nexthops"], json!(["set", ["10.0.0.2"]]));
        replica.apply(&json!({ "BFD": { "u1": { "modify": {
            "status": ["set", []],                  // an optional value: replaced (here cleared)
            "nexthops": ["set", ["10.0.0.2", "10.0.0.3"]], // one out, one in
            "external_ids": ["map", [["af", "4"], ["vendor", "veg"], ["new", "x"]]] } } } }));
        let row = replica.row("BFD", "u1").unwrap();
        assert_eq!(row["status"], json!(["set", []]));
        assert_eq!(row["nexthops"], json!(["set", ["10.0.0.3"]]));
        let ids = map_pairs(&row["external_ids"]);
        assert_eq!(
            ids.len(),
            2,
            "af removed (same value), vendor updated, new inserted: {ids:?}"
        );
        assert_eq!(ids["\"vendor\""].1, "veg");
        replica.apply(&json!({ "BFD": { "u1": { "modify": { "status": "up" } } } }));
        assert_eq!(
            replica.row("BFD", "u1").unwrap()["status"],
            json!(["set", ["up"]]),
            "replaced, not toggled"
        );
        replica.apply(&json!({ "BFD": { "u1": { "delete": null } } }));
        assert!(replica.row("BFD", "u1").is_none());
    }
}
