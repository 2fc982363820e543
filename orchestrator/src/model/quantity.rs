//! Scalar value types with wire formats of their own: resource quantities ("100m",
//! "128Mi"), int-or-string fields (ports, surge percentages) and base64 byte strings
//! (Secret and ConfigMap binary data).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A resource quantity as written by the user ("100m", "0.5", "128Mi", "1G", "1e3").
/// It is kept verbatim so objects round-trip; [`Quantity::parse`] gives its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Quantity(pub String);

/// A quantity's exact value in thousandths ("millis"): millicores for cpu, and
/// bytes × 1000 for memory. Amounts finer than a milli round up, as Kubernetes does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParsedQuantity {
    millis: i128,
}

impl ParsedQuantity {
    pub fn from_millis(millis: i128) -> Self {
        Self { millis }
    }

    pub fn millis(self) -> i128 {
        self.millis
    }

    /// The value in whole units, rounded up (bytes for memory, cores for cpu).
    pub fn value(self) -> i128 {
        self.millis.div_euclid(1000) + i128::from(self.millis.rem_euclid(1000) != 0)
    }
}

impl Quantity {
    pub fn parse(&self) -> Result<ParsedQuantity, String> {
        let invalid = || {
            format!(
                "{:?} is not a valid quantity (a number with an optional suffix such as m, k, M, \
                 G, Ki, Mi, Gi or an exponent like e3)",
                self.0
            )
        };
        let text = self.0.as_str();
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(invalid());
        }
        let (power_of_ten, power_of_two): (i32, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            exponent => {
                let digits = exponent.strip_prefix(['e', 'E']).ok_or_else(invalid)?;
                (digits.parse().map_err(|_| invalid())?, 0)
            }
        };
        let too_large = || format!("{:?} is too large", self.0);
        let mut mantissa: i128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(digit - b'0')))
                .ok_or_else(too_large)?;
        }
        let scaled = mantissa
            .checked_mul(1 << power_of_two)
            .ok_or_else(too_large)?;
        // millis = mantissa × 2^b × 10^(e + 3 - fraction digits)
        let fraction_len = i32::try_from(fraction.len()).map_err(|_| too_large())?;
        let exponent = power_of_ten + 3 - fraction_len;
        let magnitude = if exponent >= 0 {
            10i128
                .checked_pow(exponent.unsigned_abs())
                .and_then(|p| scaled.checked_mul(p))
                .ok_or_else(too_large)?
        } else {
            match 10i128.checked_pow(exponent.unsigned_abs()) {
                Some(divisor) => scaled / divisor + i128::from(scaled % divisor != 0),
                // Smaller than any milli: rounds up to one unless it is zero.
                None => i128::from(scaled != 0),
            }
        };
        Ok(ParsedQuantity {
            millis: if negative { -magnitude } else { magnitude },
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Self {
        Quantity(s.to_string())
    }
}

/// Quantities are strings, but YAML users write `cpu: 2` or `cpu: 0.5`, so numbers are
/// accepted too and kept in their shortest spelling.
impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity (a string or a number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                // f64's Display is the shortest spelling that reads back the same.
                Ok(Quantity(v.to_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// A field that holds either a number or a name/percentage: `targetPort: 8080` or
/// `targetPort: http`, `maxSurge: 1` or `maxSurge: 25%`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

/// Hand-written rather than `untagged` so a wrong value gets a precise message
/// instead of serde's "did not match any variant".
impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrStringVisitor;
        impl Visitor<'_> for IntOrStringVisitor {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("{v} is out of range for a 32-bit integer")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i32::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("{v} is out of range for a 32-bit integer")))
            }
        }
        deserializer.deserialize_any(IntOrStringVisitor)
    }
}

/// Bytes carried as base64 text (Secret `data`, ConfigMap `binaryData`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteString(pub Vec<u8>);

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteStringVisitor;
        impl Visitor<'_> for ByteStringVisitor {
            type Value = ByteString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteString, E> {
                // The value is secret: say what is wrong, never echo it.
                BASE64
                    .decode(v)
                    .map(ByteString)
                    .map_err(|e| E::custom(format!("invalid base64 ({e})")))
            }
        }
        deserializer.deserialize_str(ByteStringVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(s: &str) -> i128 {
        Quantity::from(s)
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
            .millis()
    }

    #[test]
    fn parses_exact_millis() {
        assert_eq!(millis("100m"), 100);
        assert_eq!(millis("0.5"), 500);
        assert_eq!(millis("1.5"), 1500);
        assert_eq!(millis("2"), 2000);
        assert_eq!(millis("+2"), 2000);
        assert_eq!(millis("-1"), -1000);
        assert_eq!(millis(".5"), 500);
        assert_eq!(millis("128Mi"), 134_217_728_000);
        assert_eq!(millis("1G"), 1_000_000_000_000);
        assert_eq!(millis("1k"), 1_000_000);
        assert_eq!(millis("1e3"), 1_000_000);
        assert_eq!(millis("1E3"), 1_000_000);
        assert_eq!(millis("25e-1"), 2500);
        assert_eq!(millis("1Ei"), 1_152_921_504_606_846_976_000);
        // Finer than a milli rounds up, as Kubernetes does.
        assert_eq!(millis("1n"), 1);
        assert_eq!(millis("1500u"), 2);
        assert_eq!(millis("0n"), 0);
        assert_eq!(millis("1e-40"), 1);
    }

    #[test]
    fn values_round_up_to_units() {
        assert_eq!(
            Quantity::from("128Mi").parse().map(ParsedQuantity::value),
            Ok(134_217_728)
        );
        assert_eq!(
            Quantity::from("100m").parse().map(ParsedQuantity::value),
            Ok(1)
        );
        assert_eq!(
            Quantity::from("1G").parse().map(ParsedQuantity::value),
            Ok(1_000_000_000)
        );
        assert!(Quantity::from("500m").parse() < Quantity::from("1").parse());
    }

    #[test]
    fn rejects_bad_quantities() {
        for bad in [
            "", "abc", "1.2.3", "1K", "1mi", "1e", "e3", "1 Mi", "--1", "1Mi5", ".",
        ] {
            assert_eq!(
                Quantity::from(bad).parse(),
                Err(format!(
                    "{bad:?} is not a valid quantity (a number with an optional suffix such as m, \
                     k, M, G, Ki, Mi, Gi or an exponent like e3)"
                )),
                "{bad:?}"
            );
        }
        assert_eq!(
            Quantity::from("1e40").parse(),
            Err("\"1e40\" is too large".to_string())
        );
        assert_eq!(
            Quantity::from("99999999999999999999999999999999999999999").parse(),
            Err("\"99999999999999999999999999999999999999999\" is too large".to_string())
        );
    }

    #[test]
    fn quantities_accept_numbers() {
        let q: Vec<Quantity> = serde_json::from_str(r#"["250m", 2, 0.5]"#).unwrap();
        assert_eq!(q, vec!["250m".into(), "2".into(), "0.5".into()]);
        assert_eq!(serde_json::to_string(&q).unwrap(), r#"["250m","2","0.5"]"#);
    }

    #[test]
    fn int_or_string() {
        let v: Vec<IntOrString> = serde_json::from_str(r#"[8080, "http", "25%"]"#).unwrap();
        assert_eq!(
            v,
            vec![
                IntOrString::Int(8080),
                IntOrString::String("http".into()),
                IntOrString::String("25%".into())
            ]
        );
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"[8080,"http","25%"]"#);
        let err = serde_json::from_str::<IntOrString>("true").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid type: boolean `true`, expected an integer or a string")
        );
        let err = serde_json::from_str::<IntOrString>("3000000000").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("3000000000 is out of range for a 32-bit integer")
        );
    }

    #[test]
    fn byte_strings_are_base64() {
        let b: ByteString = serde_json::from_str(r#""aGVsbG8=""#).unwrap();
        assert_eq!(b.0, b"hello");
        assert_eq!(serde_json::to_string(&b).unwrap(), r#""aGVsbG8=""#);
        assert!(serde_json::from_str::<ByteString>(r#""not base64!""#).is_err());
    }
}
