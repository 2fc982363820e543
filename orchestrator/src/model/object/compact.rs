//! Model values straight to JSON bytes without their unset (null) fields: the same
//! JSON as [`to_json`](super::to_json) gives, without building a
//! `serde_json::Value` first and stripping its nulls (the model's optional fields
//! serialize as null). Struct fields and map entries whose value is null are left
//! out at every depth; list items are kept, as `to_json` keeps them. Fields keep
//! the order of their declaration, where a `Value`'s are sorted by name.
//!
//! [`SkipNulls`] wraps serde_json's serializer and passes every call on, checking
//! each field with [`is_null`] first; a field path can be left out as well (the
//! store keeps objects without `metadata.resourceVersion`).

use std::fmt;

use serde::ser::{
    Impossible, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// Appends `value` to `out` as JSON without null fields, and without the field at
/// `omit` (a path of field names from the top; empty: none).
pub(crate) fn write<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    omit: &'static [&'static str],
) -> Result<(), serde_json::Error> {
    value.serialize(SkipNulls {
        inner: &mut serde_json::Serializer::new(out),
        omit,
    })
}

/// A serializer that leaves out null fields, and the field at `omit`.
struct SkipNulls<S> {
    inner: S,
    omit: &'static [&'static str],
}

/// A value to serialize through [`SkipNulls`] as well: what lies inside a value
/// (fields, items, entries) has its nulls left out too.
struct Nested<'a, T: ?Sized> {
    value: &'a T,
    omit: &'static [&'static str],
}

impl<T: Serialize + ?Sized> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(SkipNulls {
            inner: serializer,
            omit: self.omit,
        })
    }
}

fn nested<T: ?Sized>(value: &T) -> Nested<'_, T> {
    Nested { value, omit: &[] }
}

/// Whether `value` serializes as JSON null (None, unit, or Some of one).
fn is_null<T: Serialize + ?Sized>(value: &T) -> bool {
    value.serialize(NullProbe).is_ok()
}

/// What remains of `omit` inside field `name`: None when `name` is the field to
/// leave out.
fn omit_within(omit: &'static [&'static str], name: &str) -> Option<&'static [&'static str]> {
    match omit {
        [last] if *last == name => None,
        [first, rest @ ..] if *first == name => Some(rest),
        _ => Some(&[]),
    }
}

impl<S: Serializer> Serializer for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = SkipNulls<S::SerializeSeq>;
    type SerializeTuple = SkipNulls<S::SerializeTuple>;
    type SerializeTupleStruct = SkipNulls<S::SerializeTupleStruct>;
    type SerializeTupleVariant = SkipNulls<S::SerializeTupleVariant>;
    type SerializeMap = SkipNulls<S::SerializeMap>;
    type SerializeStruct = SkipNulls<S::SerializeStruct>;
    type SerializeStructVariant = SkipNulls<S::SerializeStructVariant>;

    fn serialize_bool(self, v: bool) -> Result<S::Ok, S::Error> {
        self.inner.serialize_bool(v)
    }
    fn serialize_i8(self, v: i8) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i8(v)
    }
    fn serialize_i16(self, v: i16) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i16(v)
    }
    fn serialize_i32(self, v: i32) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i32(v)
    }
    fn serialize_i64(self, v: i64) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i64(v)
    }
    fn serialize_i128(self, v: i128) -> Result<S::Ok, S::Error> {
        self.inner.serialize_i128(v)
    }
    fn serialize_u8(self, v: u8) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u8(v)
    }
    fn serialize_u16(self, v: u16) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u16(v)
    }
    fn serialize_u32(self, v: u32) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u32(v)
    }
    fn serialize_u64(self, v: u64) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<S::Ok, S::Error> {
        self.inner.serialize_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        self.inner.serialize_f32(v)
    }
    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        self.inner.serialize_f64(v)
    }
    fn serialize_char(self, v: char) -> Result<S::Ok, S::Error> {
        self.inner.serialize_char(v)
    }
    fn serialize_str(self, v: &str) -> Result<S::Ok, S::Error> {
        self.inner.serialize_str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<S::Ok, S::Error> {
        self.inner.serialize_bytes(v)
    }
    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(&Nested {
            value,
            omit: self.omit,
        })
    }
    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_struct(name)
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_newtype_struct(
            name,
            &Nested {
                value,
                omit: self.omit,
            },
        )
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner
            .serialize_newtype_variant(name, index, variant, &nested(value))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Ok(SkipNulls {
            inner: self.inner.serialize_seq(len)?,
            omit: &[],
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        Ok(SkipNulls {
            inner: self.inner.serialize_tuple(len)?,
            omit: &[],
        })
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Ok(SkipNulls {
            inner: self.inner.serialize_tuple_struct(name, len)?,
            omit: &[],
        })
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Ok(SkipNulls {
            inner: self
                .inner
                .serialize_tuple_variant(name, index, variant, len)?,
            omit: &[],
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        // Entries left out make the length unknown in advance.
        Ok(SkipNulls {
            inner: self.inner.serialize_map(None)?,
            omit: &[],
        })
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Ok(SkipNulls {
            inner: self.inner.serialize_struct(name, len)?,
            omit: self.omit,
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Ok(SkipNulls {
            inner: self
                .inner
                .serialize_struct_variant(name, index, variant, len)?,
            omit: &[],
        })
    }
}

impl<S: SerializeSeq> SerializeSeq for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.inner.serialize_element(&nested(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

impl<S: SerializeTuple> SerializeTuple for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.inner.serialize_element(&nested(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

impl<S: SerializeTupleStruct> SerializeTupleStruct for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.inner.serialize_field(&nested(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

impl<S: SerializeTupleVariant> SerializeTupleVariant for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.inner.serialize_field(&nested(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

impl<S: SerializeMap> SerializeMap for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    // Maps (BTreeMap, HashMap, serde_json's Map, flattened structs) write whole
    // entries, which may be left out; a key written alone is passed on as is.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), S::Error> {
        self.inner.serialize_key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.inner.serialize_value(&nested(value))
    }
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), S::Error> {
        if is_null(value) {
            return Ok(());
        }
        self.inner.serialize_entry(key, &nested(value))
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

impl<S: SerializeStruct> SerializeStruct for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        let Some(omit) = omit_within(self.omit, name) else {
            return self.inner.skip_field(name);
        };
        if is_null(value) {
            return self.inner.skip_field(name);
        }
        self.inner.serialize_field(name, &Nested { value, omit })
    }
    fn skip_field(&mut self, name: &'static str) -> Result<(), S::Error> {
        self.inner.skip_field(name)
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

impl<S: SerializeStructVariant> SerializeStructVariant for SkipNulls<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        if is_null(value) {
            return self.inner.skip_field(name);
        }
        self.inner.serialize_field(name, &nested(value))
    }
    fn skip_field(&mut self, name: &'static str) -> Result<(), S::Error> {
        self.inner.skip_field(name)
    }
    fn end(self) -> Result<S::Ok, S::Error> {
        self.inner.end()
    }
}

/// Answers [`is_null`]: Ok for what JSON writes as null, Err at the first sign of
/// anything else (without serializing it).
struct NullProbe;

#[derive(Debug)]
struct NotNull;

impl fmt::Display for NotNull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not null")
    }
}

impl std::error::Error for NotNull {}

impl serde::ser::Error for NotNull {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NotNull
    }
}

impl Serializer for NullProbe {
    type Ok = ();
    type Error = NotNull;
    type SerializeSeq = Impossible<(), NotNull>;
    type SerializeTuple = Impossible<(), NotNull>;
    type SerializeTupleStruct = Impossible<(), NotNull>;
    type SerializeTupleVariant = Impossible<(), NotNull>;
    type SerializeMap = Impossible<(), NotNull>;
    type SerializeStruct = Impossible<(), NotNull>;
    type SerializeStructVariant = Impossible<(), NotNull>;

    fn serialize_none(self) -> Result<(), NotNull> {
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), NotNull> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotNull> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotNull> {
        value.serialize(NullProbe)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotNull> {
        value.serialize(NullProbe)
    }
    fn serialize_bool(self, _: bool) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_i8(self, _: i8) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_i16(self, _: i16) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_i32(self, _: i32) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_i64(self, _: i64) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_u8(self, _: u8) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_u16(self, _: u16) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_u32(self, _: u32) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_u64(self, _: u64) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_f32(self, v: f32) -> Result<(), NotNull> {
        // serde_json writes a non-finite number as null.
        if v.is_finite() { Err(NotNull) } else { Ok(()) }
    }
    fn serialize_f64(self, v: f64) -> Result<(), NotNull> {
        if v.is_finite() { Err(NotNull) } else { Ok(()) }
    }
    fn serialize_char(self, _: char) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_str(self, _: &str) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotNull> {
        Err(NotNull)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotNull> {
        Err(NotNull)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotNull> {
        Err(NotNull)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotNull> {
        Err(NotNull)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotNull> {
        Err(NotNull)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotNull> {
        Err(NotNull)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotNull> {
        Err(NotNull)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotNull> {
        Err(NotNull)
    }
}
