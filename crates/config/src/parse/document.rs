//! From `isola.toml`'s text to the raw types, past every unknown key and
//! value of the wrong type: serde stops at the first, so each is recorded,
//! left out of the parsed document, and the document read again. Text that
//! is not TOML stops here: nothing after it would mean anything.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, Deserializer};

use crate::error::{Fault, Faults};
use crate::raw::RawConfig;

/// A key left out of the document: the span of its table, its name, the
/// span of its value.
type LeftOut = (Range<usize>, String, Range<usize>);

/// The raw config in `text`, without the keys and values at fault, which
/// go to `faults`. `None` (with at least one fault recorded) when the text
/// is not TOML or a fault cannot be left out.
pub(super) fn read(text: &str, faults: &mut Faults) -> Option<RawConfig> {
    let mut root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            faults.push(toml_fault(&e));
            return None;
        }
    };
    let mut left_out: Vec<LeftOut> = Vec::new();
    // A fault seen twice was not repaired: stop rather than loop.
    let mut seen: Vec<(Range<usize>, String)> = Vec::new();
    loop {
        let error = match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let Some(span) = error.span() else {
            faults.push(toml_fault(&error));
            return None;
        };
        let message = error.message().trim().to_owned();
        if seen.contains(&(span.clone(), message.clone())) {
            return None;
        }
        seen.push((span.clone(), message.clone()));
        if let Some(field) = missing_field(&message) {
            // Required keys are all strings: an empty one stands in, at the
            // mistyped value it replaces (already reported), else at the
            // table that lacks it.
            let stand_in = match left_out
                .iter()
                .find(|(table, key, _)| *table == span && key == field)
            {
                Some((_, _, value)) => value.clone(),
                None => {
                    faults.push(Fault::new(Some(span.clone()), None, message.clone()));
                    span.clone()
                }
            };
            if !stand_in_for(&mut root, &span, field, &stand_in) {
                return None;
            }
            faults.stand_in(stand_in);
        } else {
            faults.push(Fault::new(Some(span.clone()), None, message));
            let root_span = root.span();
            match leave_out(root.get_mut(), &root_span, &span) {
                Some(entry) => left_out.push(entry),
                None => return None,
            }
        }
    }
}

fn toml_fault(error: &toml::de::Error) -> Fault {
    Fault::new(error.span(), None, error.message().trim())
}

/// The field serde names in "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Remove the entry whose key or value is at `span` (or the array element
/// there) from `table` (at `table_span`) or a table within it.
fn leave_out(
    table: &mut DeTable<'_>,
    table_span: &Range<usize>,
    span: &Range<usize>,
) -> Option<LeftOut> {
    let at_fault = table
        .iter()
        .find(|(key, value)| key.span() == *span || value.span() == *span)
        .map(|(key, _)| key.clone());
    if let Some(key) = at_fault {
        let (key, value) = table.remove_entry(&key)?;
        return Some((
            table_span.clone(),
            key.into_inner().into_owned(),
            value.span(),
        ));
    }
    table
        .iter_mut()
        .find_map(|(_, value)| leave_out_within(value, span))
}

fn leave_out_within(value: &mut Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<LeftOut> {
    let value_span = value.span();
    match value.get_mut() {
        DeValue::Table(table) => leave_out(table, &value_span, span),
        DeValue::Array(array) => {
            if let Some(i) = array.iter().position(|item| item.span() == *span) {
                let kept = array
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, item)| item.clone())
                    .collect();
                *array = kept;
                return Some((value_span, format!("[{i}]"), span.clone()));
            }
            array
                .iter_mut()
                .find_map(|item| leave_out_within(item, span))
        }
        _ => None,
    }
}

/// Put an empty string at `span` under `field` in the table at
/// `table_span`; false if there is no such table.
fn stand_in_for(
    root: &mut Spanned<DeTable<'_>>,
    table_span: &Range<usize>,
    field: &str,
    span: &Range<usize>,
) -> bool {
    let table = if root.span() == *table_span {
        Some(root.get_mut())
    } else {
        root.get_mut()
            .iter_mut()
            .find_map(|(_, value)| table_at(value, table_span))
    };
    let Some(table) = table else { return false };
    table.insert(
        Spanned::new(span.clone(), Cow::Owned(field.to_owned())),
        Spanned::new(span.clone(), DeValue::String(Cow::Borrowed(""))),
    );
    true
}

/// The table at `span` in `value`. An array of tables (`[[worker]]`) has
/// the span of its first table: the search goes on into it.
fn table_at<'t, 'i>(
    value: &'t mut Spanned<DeValue<'i>>,
    span: &Range<usize>,
) -> Option<&'t mut DeTable<'i>> {
    let here = value.span() == *span;
    match value.get_mut() {
        DeValue::Table(table) => {
            if here {
                return Some(table);
            }
            table
                .iter_mut()
                .find_map(|(_, value)| table_at(value, span))
        }
        DeValue::Array(array) => array.iter_mut().find_map(|item| table_at(item, span)),
        _ => None,
    }
}
