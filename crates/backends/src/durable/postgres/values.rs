//! Values between SQLite's five kinds and PostgreSQL's types.

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};

use crate::sql::Value;

/// Roughly what `value` costs in memory.
pub(super) fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 8,
    }
}

/// A bound value, encoded as the type its placeholder was declared with
/// (as D1 on PostgreSQL binds them).
pub(super) struct Param<'a>(pub(super) &'a Value);

impl std::fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => return Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT2 => out.extend_from_slice(&i16::try_from(*i)?.to_be_bytes()),
                Type::INT4 => out.extend_from_slice(&i32::try_from(*i)?.to_be_bytes()),
                Type::FLOAT8 => out.extend_from_slice(&(*i as f64).to_be_bytes()),
                Type::BOOL => out.extend_from_slice(&[u8::from(*i != 0)]),
                Type::TEXT | Type::VARCHAR => out.extend_from_slice(i.to_string().as_bytes()),
                _ => out.extend_from_slice(&i.to_be_bytes()),
            },
            Value::Real(f) => out.extend_from_slice(&f.to_be_bytes()),
            Value::Text(s) => out.extend_from_slice(s.as_bytes()),
            Value::Blob(b) => out.extend_from_slice(b),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

pub(super) fn param_type(value: &Value) -> Type {
    match value {
        Value::Integer(_) => Type::INT8,
        Value::Real(_) => Type::FLOAT8,
        Value::Text(_) => Type::TEXT,
        Value::Blob(_) => Type::BYTEA,
        // Oid 0: unspecified, PostgreSQL infers it from the context.
        Value::Null => Type::new("unspecified".into(), 0, Kind::Pseudo, "pg_catalog".into()),
    }
}

/// A column value in one of SQLite's five kinds, as D1 on PostgreSQL
/// returns them.
pub(super) struct Column(pub(super) Value);

impl<'a> tokio_postgres::types::FromSql<'a> for Column {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let int = |n: i64| Ok(Column(Value::Integer(n)));
        match *ty {
            Type::BOOL => int(i64::from(raw.first().copied().unwrap_or(0) != 0)),
            Type::INT2 => int(i16::from_be_bytes(raw.try_into()?).into()),
            Type::INT4 => int(i32::from_be_bytes(raw.try_into()?).into()),
            Type::INT8 => int(i64::from_be_bytes(raw.try_into()?)),
            Type::OID => int(u32::from_be_bytes(raw.try_into()?).into()),
            Type::FLOAT4 => Ok(Column(Value::Real(
                f32::from_be_bytes(raw.try_into()?).into(),
            ))),
            Type::FLOAT8 => Ok(Column(Value::Real(f64::from_be_bytes(raw.try_into()?)))),
            Type::NUMERIC => Ok(Column(numeric(raw).ok_or("malformed numeric")?)),
            Type::BYTEA => Ok(Column(Value::Blob(raw.to_vec()))),
            Type::JSONB => Ok(Column(Value::Text(
                std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned(),
            ))),
            Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::JSON
            | Type::XML => Ok(Column(Value::Text(std::str::from_utf8(raw)?.to_owned()))),
            ref other => Err(format!(
                "column type {} is not supported; cast it (e.g. `::text`)",
                other.name()
            )
            .into()),
        }
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Column(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary NUMERIC: an integer when it has no fractional
/// digits and fits, else a real.
fn numeric(raw: &[u8]) -> Option<Value> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(raw.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Some(Value::Real(f64::NAN));
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|d| word(8 + 2 * d))
        .collect::<Option<_>>()?;
    let negative = sign == 0x4000;
    if dscale == 0 {
        let mut n: i128 = 0;
        for (d, &digit) in digits.iter().enumerate() {
            let exponent = weight - d as i32;
            if exponent < 0 {
                break;
            }
            n = n.checked_add(
                i128::from(digit).checked_mul(10_000i128.checked_pow(exponent as u32)?)?,
            )?;
        }
        let n = if negative { -n } else { n };
        if let Ok(n) = i64::try_from(n) {
            return Some(Value::Integer(n));
        }
    }
    let mut f = 0f64;
    for (d, &digit) in digits.iter().enumerate() {
        f += f64::from(digit) * 10_000f64.powi(weight - d as i32);
    }
    Some(Value::Real(if negative { -f } else { f }))
}
