//! Whether a typed value writes back in the shape of the JSON it was read from,
//! answered without writing it back.
//!
//! [`crate::document::typed`] accepts a value only if `same_shape(given, to_value(read))`
//! does. Building that written-back value costs more than the read itself (every
//! string copied, every key and signature hex-encoded, every object a new map), and
//! nearly every document passes. So [`matches`] runs the type's own `Serialize` beside
//! the given JSON and answers only "it matches" or "it may not": it never answers yes
//! where the written-back value would be refused (or could not be written at all), and
//! on "it may not" the caller takes the slow path, which says why.
//!
//! What each `Serializer` call stands for is what `serde_json::value::Serializer` makes
//! of it; the rules are `same_shape`'s: where the type writes an object the given value
//! must be an object, whose members are each checked against the member written under
//! the same name, and whose `null` members must be written; where it writes an array
//! the given value must be an array, checked pairwise; a written scalar takes anything.

use std::fmt;

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Map, Value};

/// Whether `read`, written back, has the shape of `given` (see the module docs).
/// `false` means only "it may not".
pub(crate) fn matches<T: Serialize + ?Sized>(given: &Value, read: &T) -> bool {
    read.serialize(Checker { given: Some(given) }).is_ok()
}

/// "The shape may not match": the only answer besides yes.
#[derive(Debug)]
pub(crate) struct MayNotMatch;

impl fmt::Display for MayNotMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the written-back shape may not match the given one")
    }
}

impl std::error::Error for MayNotMatch {}

impl ser::Error for MayNotMatch {
    fn custom<T: fmt::Display>(_: T) -> Self {
        MayNotMatch
    }
}

type Result<T> = std::result::Result<T, MayNotMatch>;

/// Checks one written value against the given one at the same place: `None` where the
/// given JSON has nothing there (a member or item only the type writes), which is
/// still walked, since a value that cannot be written at all is refused too.
struct Checker<'g> {
    given: Option<&'g Value>,
}

/// The given object where one is written: `None` if nothing is given there.
fn given_object(given: Option<&Value>) -> Result<Option<&Map<String, Value>>> {
    match given {
        None => Ok(None),
        Some(Value::Object(members)) => Ok(Some(members)),
        Some(_) => Err(MayNotMatch),
    }
}

/// The given array where one is written: `None` if nothing is given there.
fn given_array(given: Option<&Value>) -> Result<Option<&[Value]>> {
    match given {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(MayNotMatch),
    }
}

/// The given member under `variant`, where the type writes the one-member object
/// `{variant: ...}`: any other given member that is `null` is not written.
fn given_variant<'g>(given: Option<&'g Value>, variant: &str) -> Result<Option<&'g Value>> {
    let Some(members) = given_object(given)? else {
        return Ok(None);
    };
    if members.iter().any(|(k, v)| v.is_null() && k != variant) {
        return Err(MayNotMatch);
    }
    Ok(members.get(variant))
}

impl<'g> ser::Serializer for Checker<'g> {
    type Ok = ();
    type Error = MayNotMatch;
    type SerializeSeq = Items<'g>;
    type SerializeTuple = Items<'g>;
    type SerializeTupleStruct = Items<'g>;
    type SerializeTupleVariant = Items<'g>;
    type SerializeMap = Members<'g>;
    type SerializeStruct = Members<'g>;
    type SerializeStructVariant = Members<'g>;

    // Scalars: a written scalar takes anything given.
    fn serialize_bool(self, _: bool) -> Result<()> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<()> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<()> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<()> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<()> {
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<()> {
        // serde_json writes only what fits a u64 or an i64.
        if u64::try_from(v).is_ok() || i64::try_from(v).is_ok() {
            Ok(())
        } else {
            Err(MayNotMatch)
        }
    }
    fn serialize_u8(self, _: u8) -> Result<()> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<()> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<()> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<()> {
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<()> {
        u64::try_from(v).map(|_| ()).map_err(|_| MayNotMatch)
    }
    // A float that is not finite is written as null: a scalar still.
    fn serialize_f32(self, _: f32) -> Result<()> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<()> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<()> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<()> {
        Ok(())
    }
    // Without this, the default would format the value into a string only to drop it.
    fn collect_str<T: fmt::Display + ?Sized>(self, _: &T) -> Result<()> {
        Ok(())
    }
    fn serialize_none(self) -> Result<()> {
        Ok(())
    }
    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<()> {
        Ok(())
    }

    // Bytes are written as an array of numbers.
    fn serialize_bytes(self, _: &[u8]) -> Result<()> {
        given_array(self.given).map(|_| ())
    }

    // Written as the value inside.
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }

    // Written as `{variant: value}`.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(Checker {
            given: given_variant(self.given, variant)?,
        })
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Items<'g>> {
        Ok(Items::new(given_array(self.given)?))
    }
    fn serialize_tuple(self, _: usize) -> Result<Items<'g>> {
        Ok(Items::new(given_array(self.given)?))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Items<'g>> {
        Ok(Items::new(given_array(self.given)?))
    }
    // Written as `{variant: [items]}`.
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Items<'g>> {
        let inner = given_variant(self.given, variant)?;
        Ok(Items::new(given_array(inner)?))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Members<'g>> {
        Ok(Members::new(given_object(self.given)?))
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Members<'g>> {
        // serde_json's own number and raw-value tokens (features this workspace does
        // not enable) are written as what they carry, not as an object: not mirrored.
        if name.starts_with("$serde_json::private::") {
            return Err(MayNotMatch);
        }
        Ok(Members::new(given_object(self.given)?))
    }
    // Written as `{variant: {members}}`.
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Members<'g>> {
        let inner = given_variant(self.given, variant)?;
        Ok(Members::new(given_object(inner)?))
    }
}

/// The items of a written array, each checked against the given item at its index.
struct Items<'g> {
    given: std::slice::Iter<'g, Value>,
}

impl<'g> Items<'g> {
    fn new(given: Option<&'g [Value]>) -> Self {
        Items {
            given: given.unwrap_or_default().iter(),
        }
    }

    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        // Past the given array's end (or with none given), nothing is compared.
        value.serialize(Checker {
            given: self.given.next(),
        })
    }
}

/// The four ways serde writes an array's items: each item goes to [`Items::item`].
macro_rules! items_impl {
    ($($trait_:ident :: $method:ident),*) => {$(
        impl ser::$trait_ for Items<'_> {
            type Ok = ();
            type Error = MayNotMatch;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                self.item(value)
            }
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

items_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// The members of a written object, each checked against the given member of the
/// same name; at the end, every given member that is `null` must have been written.
struct Members<'g> {
    given: Option<&'g Map<String, Value>>,
    /// The names of the given `null` members written so far: empty (and unallocated)
    /// unless the given object has such members, which are rare in what passes.
    written_nulls: Vec<&'g str>,
    /// The given value under the key [`ser::SerializeMap::serialize_key`] wrote last.
    next: Option<&'g Value>,
}

impl<'g> Members<'g> {
    fn new(given: Option<&'g Map<String, Value>>) -> Self {
        Members {
            given,
            written_nulls: Vec::new(),
            next: None,
        }
    }

    /// Notes that the given member `given` (under its name) is written, and returns
    /// its value to check the written one against.
    fn written(&mut self, given: Option<(&'g String, &'g Value)>) -> Option<&'g Value> {
        let (name, value) = given?;
        if value.is_null() {
            self.written_nulls.push(name);
        }
        Some(value)
    }

    fn member<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        let given = self.given.and_then(|m| m.get_key_value(name));
        value.serialize(Checker {
            given: self.written(given),
        })
    }

    fn finish(self) -> Result<()> {
        let Some(members) = self.given else {
            return Ok(());
        };
        let unwritten_null = members
            .iter()
            .any(|(k, v)| v.is_null() && !self.written_nulls.contains(&k.as_str()));
        if unwritten_null {
            Err(MayNotMatch)
        } else {
            Ok(())
        }
    }
}

/// The two ways serde writes a struct's fields: each goes to [`Members::member`].
macro_rules! members_impl {
    ($($trait_:ident),*) => {$(
        impl ser::$trait_ for Members<'_> {
            type Ok = ();
            type Error = MayNotMatch;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Result<()> {
                self.member(name, value)
            }
            fn end(self) -> Result<()> {
                self.finish()
            }
        }
    )*};
}

members_impl!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Members<'_> {
    type Ok = ();
    type Error = MayNotMatch;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        let given = key.serialize(Key { given: self.given })?;
        self.next = self.written(given);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(Checker {
            given: self.next.take(),
        })
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// A map key as serde_json writes it (a string), looked up among the given members:
/// the given member of that name, if any. Only keys that are strings, characters,
/// integers or unit variants are mirrored; any other kind may not be writable.
struct Key<'g> {
    given: Option<&'g Map<String, Value>>,
}

impl<'g> Key<'g> {
    fn find(&self, name: &str) -> Result<Option<(&'g String, &'g Value)>> {
        Ok(self.given.and_then(|m| m.get_key_value(name)))
    }
}

type Found<'g> = Option<(&'g String, &'g Value)>;

impl<'g> ser::Serializer for Key<'g> {
    type Ok = Found<'g>;
    type Error = MayNotMatch;
    type SerializeSeq = Impossible<Found<'g>, MayNotMatch>;
    type SerializeTuple = Impossible<Found<'g>, MayNotMatch>;
    type SerializeTupleStruct = Impossible<Found<'g>, MayNotMatch>;
    type SerializeTupleVariant = Impossible<Found<'g>, MayNotMatch>;
    type SerializeMap = Impossible<Found<'g>, MayNotMatch>;
    type SerializeStruct = Impossible<Found<'g>, MayNotMatch>;
    type SerializeStructVariant = Impossible<Found<'g>, MayNotMatch>;

    fn serialize_str(self, v: &str) -> Result<Found<'g>> {
        self.find(v)
    }
    fn serialize_char(self, v: char) -> Result<Found<'g>> {
        self.find(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Found<'g>> {
        self.find(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Found<'g>> {
        value.serialize(self)
    }
    // Integer keys are written as their decimal text; maps with them are rare, so the
    // text is simply formatted.
    fn serialize_i8(self, v: i8) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_i128(self, v: i128) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn serialize_u128(self, v: u128) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, v: &T) -> Result<Found<'g>> {
        self.find(&v.to_string())
    }

    // Not mirrored: serde_json refuses some of these as keys and writes others in
    // ways that have changed between its versions; the slow path decides.
    fn serialize_bool(self, _: bool) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_f32(self, _: f32) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_f64(self, _: f64) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_none(self) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_unit(self) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Found<'g>> {
        Err(MayNotMatch)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(MayNotMatch)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(MayNotMatch)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(MayNotMatch)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(MayNotMatch)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(MayNotMatch)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(MayNotMatch)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(MayNotMatch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};
    use serde_json::{json, Value};

    use super::matches;
    use crate::document::same_shape;

    /// What the slow path says: write `read` back, then compare.
    fn written_back_matches<T: Serialize>(given: &Value, read: &T) -> bool {
        match serde_json::to_value(read) {
            Ok(written) => same_shape(given, &written, &mut "$".to_string()).is_ok(),
            Err(_) => false,
        }
    }

    /// `(fast, slow)` for `given` read as a `T`; `None` if it does not read as one.
    fn answers<T: DeserializeOwned + Serialize>(given: &Value) -> Option<(bool, bool)> {
        let read = T::deserialize(given).ok()?;
        Some((matches(given, &read), written_back_matches(given, &read)))
    }

    /// Both paths give `accepted` for `given`, which must read as a `T`.
    fn agree<T: DeserializeOwned + Serialize>(given: Value, accepted: bool) {
        let (fast, slow) = answers::<T>(&given)
            .unwrap_or_else(|| panic!("{given} does not read as {}", std::any::type_name::<T>()));
        assert_eq!(
            (fast, slow),
            (accepted, accepted),
            "{given} as {}: (fast, slow)",
            std::any::type_name::<T>()
        );
    }

    #[derive(Serialize, Deserialize)]
    struct Inner {
        x: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    enum External {
        Unit,
        Newtype(Inner),
        Tuple(u8, Inner),
        Struct { i: Inner },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "type")]
    enum Internal {
        A { i: Inner },
        B(Inner),
        C,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "t", content = "c")]
    enum Adjacent {
        N(Inner),
        U,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        I(Inner),
        N(u64),
    }

    #[derive(Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(rename_all = "lowercase")]
    enum KeyKind {
        Tcp,
        Udp,
    }

    /// No `deny_unknown_fields`: members the type does not know reach the shape check.
    #[derive(Serialize, Deserialize)]
    struct Outer {
        // Written as null when absent.
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maybe: Option<Inner>,
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        nested: Vec<Vec<Inner>>,
        #[serde(default)]
        any: Value,
        #[serde(default)]
        map: BTreeMap<String, Inner>,
        #[serde(default)]
        numbered: BTreeMap<u32, Inner>,
        #[serde(default)]
        lettered: BTreeMap<char, Inner>,
        #[serde(default)]
        kinds: BTreeMap<KeyKind, Inner>,
        #[serde(default)]
        pair: Option<(u8, Inner)>,
        #[serde(default)]
        external: Vec<External>,
        #[serde(default)]
        internal: Vec<Internal>,
        #[serde(default)]
        adjacent: Vec<Adjacent>,
        #[serde(default)]
        untagged: Vec<Untagged>,
        #[serde(default)]
        wrapped: Option<Wrap>,
        #[serde(default)]
        tuple_struct: Option<TupleStruct>,
        #[serde(default)]
        bytes: Bytes,
    }

    #[derive(Serialize, Deserialize)]
    struct Wrap(Inner);

    #[derive(Serialize, Deserialize)]
    struct TupleStruct(u8, Inner);

    /// Written through `serialize_bytes`: an array of numbers.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Vec::deserialize(d).map(Bytes)
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Flat {
        x: u64,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
    }

    #[derive(Serialize, Deserialize)]
    struct FlatStruct {
        #[serde(flatten)]
        inner: Inner,
        z: u8,
    }

    /// Reads from anything; cannot be written.
    #[derive(Default)]
    struct Unwritable;

    impl Serialize for Unwritable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot be written"))
        }
    }

    impl<'de> Deserialize<'de> for Unwritable {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Unwritable)
        }
    }

    #[derive(Serialize, Deserialize)]
    struct WithUnwritable {
        #[serde(default)]
        never_given: Unwritable,
    }

    #[test]
    fn members_and_nulls() {
        agree::<Outer>(json!({}), true);
        agree::<Outer>(json!({"unknown": 1, "other": [null]}), true);
        // A member the type writes as null may be given as null; one it leaves out or
        // does not know may not.
        agree::<Outer>(json!({"inner": null}), true);
        agree::<Outer>(json!({"maybe": null}), false);
        agree::<Outer>(json!({"unknown": null}), false);
        agree::<Outer>(json!({"items": [{"x": 1, "y": null}]}), false);
        agree::<Outer>(json!({"items": [{"x": 1, "y": "a"}]}), true);
        agree::<Outer>(json!({"inner": {"x": 1}, "maybe": {"x": 2}}), true);
    }

    #[test]
    fn positional_arrays_for_structs() {
        agree::<Inner>(json!([1]), false);
        agree::<Outer>(json!({"inner": [5]}), false);
        agree::<Outer>(json!({"items": [{"x": 1}, [2]]}), false);
        agree::<Outer>(json!({"nested": [[{"x": 1, "y": "a"}], []]}), true);
        agree::<Outer>(json!({"nested": [[{"x": 1}], [[2]]]}), false);
        agree::<Outer>(json!({"wrapped": {"x": 1}}), true);
        agree::<Outer>(json!({"wrapped": [1]}), false);
        agree::<Outer>(json!({"pair": [1, {"x": 2}]}), true);
        agree::<Outer>(json!({"pair": [1, [2]]}), false);
        agree::<Outer>(json!({"tuple_struct": [1, {"x": 2}]}), true);
        agree::<Outer>(json!({"tuple_struct": [1, [2]]}), false);
        agree::<Outer>(json!({"bytes": [1, 2]}), true);
    }

    #[test]
    fn enums_of_each_kind() {
        let each = |items: Value, accepted| agree::<Outer>(json!({ "external": items }), accepted);
        each(json!(["Unit", {"Newtype": {"x": 1}}]), true);
        each(json!([{"Newtype": [1]}]), false);
        each(json!([{"Tuple": [1, {"x": 1}]}]), true);
        each(json!([{"Tuple": [1, [1]]}]), false);
        each(json!([{"Struct": {"i": {"x": 1}}}]), true);
        each(json!([{"Struct": {"i": [1]}}]), false);

        let each = |items: Value, accepted| agree::<Outer>(json!({ "internal": items }), accepted);
        each(
            json!([{"type": "A", "i": {"x": 1}}, {"type": "B", "x": 1}]),
            true,
        );
        each(json!([{"type": "C"}]), true);
        each(json!([{"type": "A", "i": [1]}]), false);
        each(json!([{"type": "B", "x": 1, "y": null}]), false);

        let each = |items: Value, accepted| agree::<Outer>(json!({ "adjacent": items }), accepted);
        each(json!([{"t": "N", "c": {"x": 1}}, {"t": "U"}]), true);
        each(json!([{"t": "N", "c": [1]}]), false);

        let each = |items: Value, accepted| agree::<Outer>(json!({ "untagged": items }), accepted);
        each(json!([{"x": 1}, 5]), true);
        each(json!([[1]]), false);
    }

    #[test]
    fn values_maps_and_flattening() {
        // A `Value` writes itself back as given, nulls and all.
        agree::<Outer>(json!({"any": {"a": null, "b": [null, {"c": null}]}}), true);
        agree::<Value>(json!([{"a": null}, 1, "s"]), true);
        agree::<Outer>(json!({"map": {"k": {"x": 1}}}), true);
        agree::<Outer>(json!({"map": {"k": [1]}}), false);
        agree::<Outer>(json!({"numbered": {"7": {"x": 1}}}), true);
        agree::<Outer>(json!({"numbered": {"7": [1]}}), false);
        agree::<Outer>(json!({"lettered": {"a": [1]}}), false);
        agree::<Outer>(json!({"kinds": {"udp": {"x": 1}}}), true);
        agree::<Outer>(json!({"kinds": {"udp": [1]}}), false);
        agree::<Flat>(json!({"x": 1, "a": null, "b": [1]}), true);
        agree::<FlatStruct>(json!({"x": 1, "z": 2}), true);
        agree::<FlatStruct>(json!({"x": 1, "z": 2, "y": null}), false);
    }

    #[test]
    fn what_cannot_be_written_is_never_accepted() {
        // Walked although nothing is given there: writing it back fails.
        agree::<WithUnwritable>(json!({}), false);
        agree::<Unwritable>(json!(1), false);
    }

    #[test]
    fn keys_not_mirrored_take_the_slow_path() {
        // serde_json reads and writes these keys (today); the fast check leaves them to
        // it, so a serde_json that refused them would still be followed.
        let bools = answers::<BTreeMap<bool, u8>>(&json!({"true": 1}));
        assert_eq!(bools, Some((false, true)));
    }

    /// Applies `op` to the `pick`-th node (in document order) of `v`.
    fn mutate(v: &mut Value, pick: &mut usize, op: u8) -> bool {
        if *pick == 0 {
            match (op, &mut *v) {
                (0, v) => *v = Value::Null,
                (1, Value::Object(m)) => {
                    m.insert("zz".into(), Value::Null);
                }
                (1, Value::Array(items)) => items.push(Value::Null),
                (2, Value::Object(m)) => {
                    *v = Value::Array(std::mem::take(m).into_iter().map(|(_, v)| v).collect())
                }
                (3, Value::Array(items)) => {
                    let members = std::mem::take(items)
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v));
                    *v = Value::Object(members.collect())
                }
                (4, v) => *v = Value::Array(vec![v.take()]),
                (5, Value::Object(m)) => {
                    m.insert("extra".into(), json!(1));
                }
                (6, Value::Object(m)) => {
                    let first = m.keys().next().cloned();
                    if let Some(k) = first {
                        m.remove(&k);
                    }
                }
                (7, Value::Object(m)) => {
                    if let Some((_, v)) = m.iter_mut().next() {
                        *v = Value::Null;
                    }
                }
                _ => {}
            }
            return true;
        }
        *pick -= 1;
        match v {
            Value::Object(m) => m.values_mut().any(|v| mutate(v, pick, op)),
            Value::Array(items) => items.iter_mut().any(|v| mutate(v, pick, op)),
            _ => false,
        }
    }

    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Object(m) => m.values().map(count).sum(),
            Value::Array(items) => items.iter().map(count).sum(),
            _ => 0,
        }
    }

    /// Documents of every kind read through [`crate::document::typed`], rich enough to
    /// reach every member.
    fn samples() -> Vec<Value> {
        let ex = crate::spec_example::Example::build();
        let contract = ex.contract.to_value();
        let key = ex.owner.public();
        let deployment = json!({
            "networks": [{"name": "n", "subnet": "10.1.0.0/24", "egress_allow": ["10.2.0.0/24"]}],
            "volumes": [{"name": "v", "size_mib": 10, "disk": "hdd"}],
            "workloads": [{
                "name": "w", "kind": "vm", "cpu": 1, "memory_mib": 64, "disk_mib": 5,
                "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": ["s"],
                          "publishers": [key]},
                "entrypoint": ["a", 1, true], "env": {"A": "b", "C": 2}, "cwd": "/",
                "network": "n", "mounts": [{"volume": "v", "path": "/d", "read_only": true}],
                "ports": [{"port": 1, "public": 2, "protocol": "udp"}]
            }],
            "publish_logs": true,
            "logs": {"url": "jsonl+tcp://h:1"},
            "metrics": {"url": "https://h/p", "ca_pem": "pem"}
        });
        let placement = json!({
            "farm": "f", "replicas": 2, "orchestrator": key,
            "failover": {"mode": "move", "after_s": 60},
            "constraints": {"min_ssd_gib": 1, "min_memory_mib": 2}
        });
        let cancellation = json!({
            "cancellation": {"id": "c", "version": 2, "owner": key},
            "signature": contract["signatures"][0]["signature"]
        });
        let outer = json!({
            "inner": {"x": 1}, "maybe": {"x": 2, "y": "s"}, "items": [{"x": 3}],
            "nested": [[{"x": 4}]], "any": {"a": [1, {"b": null}]},
            "map": {"k": {"x": 5}}, "numbered": {"6": {"x": 6}}, "lettered": {"l": {"x": 7}},
            "kinds": {"tcp": {"x": 8}}, "pair": [9, {"x": 10}],
            "external": ["Unit", {"Newtype": {"x": 1}}, {"Tuple": [1, {"x": 1}]},
                         {"Struct": {"i": {"x": 1}}}],
            "internal": [{"type": "A", "i": {"x": 1}}, {"type": "B", "x": 1}, {"type": "C"}],
            "adjacent": [{"t": "N", "c": {"x": 1}}, {"t": "U"}],
            "untagged": [{"x": 1}, 2], "wrapped": {"x": 1}, "tuple_struct": [1, {"x": 1}],
            "bytes": [1, 2]
        });
        vec![
            contract["contract"].clone(),
            contract["contract"]["blueprint"]["embedded"]["blueprint"].clone(),
            contract["contract"]["blueprint"]["embedded"]["blueprint"]["params"].clone(),
            deployment,
            placement,
            cancellation,
            outer,
        ]
    }

    /// Fast and slow answers for `v` read as each type that reads it.
    fn all_answers(v: &Value) -> Vec<(&'static str, bool, bool)> {
        type Check = fn(&Value) -> Option<(bool, bool)>;
        let checks: [(&str, Check); 8] = [
            ("Contract", answers::<crate::Contract>),
            ("Blueprint", answers::<crate::Blueprint>),
            (
                "params",
                answers::<BTreeMap<String, crate::params::ParamSpec>>,
            ),
            ("Deployment", answers::<crate::Deployment>),
            ("Placement", answers::<crate::Placement>),
            ("SignedCancellation", answers::<crate::SignedCancellation>),
            ("Outer", answers::<Outer>),
            ("Value", answers::<Value>),
        ];
        checks
            .iter()
            .filter_map(|(name, check)| check(v).map(|(fast, slow)| (*name, fast, slow)))
            .collect()
    }

    #[test]
    fn samples_are_accepted_by_both() {
        for v in samples() {
            let answers = all_answers(&v);
            assert!(answers.len() >= 2, "{v} reads as only {answers:?}");
            for (name, fast, slow) in answers {
                assert!(fast && slow, "{v} as {name}: fast {fast}, slow {slow}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever is done to a document, the fast check accepts it exactly when
        /// writing it back would (the types here are all mirrored exactly).
        #[test]
        fn mutated_documents_get_the_same_answer(
            sample in 0usize..7,
            edits in prop::collection::vec((any::<usize>(), 0u8..8), 1..4),
        ) {
            let mut v = samples().swap_remove(sample);
            for (pick, op) in edits {
                let mut pick = pick % count(&v);
                mutate(&mut v, &mut pick, op);
            }
            for (name, fast, slow) in all_answers(&v) {
                prop_assert_eq!(fast, slow, "{} as {}", v, name);
            }
        }
    }
}
