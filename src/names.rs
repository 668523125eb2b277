//! [`named_enum!`]: an enum whose variants each have one spelling, written
//! once, from which its list (`ALL`), `as_str`, `Display`, `FromStr` and
//! serde's spelling all come, so they cannot drift apart.

use std::fmt;

/// Declares an enum from a list of `Variant = "spelling"`. Used for every
/// enum whose names users see: event kinds, rotation strategies, report
/// outcomes, log formats.
///
/// Attributes on the enum (docs, extra derives) and on variants (docs,
/// `#[default]`) are passed through. The enum always derives `Debug`,
/// `Clone`, `Copy`, `PartialEq`, `Eq`, `Hash`, `Serialize` and `Deserialize`.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        $vis enum $ty {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// Every spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The spelling users see (configuration, JSON, events).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text,)+ }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::names::ParseEnumError;

            fn from_str(s: &str) -> ::std::result::Result<Self, $crate::names::ParseEnumError> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or($crate::names::ParseEnumError { expected: Self::NAMES })
            }
        }
    };
}

/// A string that is none of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseEnumError {
    /// The spellings it could have been.
    pub expected: &'static [&'static str],
}

impl fmt::Display for ParseEnumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected one of {}", self.expected.join(" | "))
    }
}

impl std::error::Error for ParseEnumError {}

#[cfg(test)]
mod tests {
    named_enum! {
        enum Color {
            Red = "red",
            DarkBlue = "dark-blue",
        }
    }

    #[test]
    fn one_spelling_everywhere() {
        for &c in Color::ALL {
            assert_eq!(c.to_string().parse::<Color>(), Ok(c));
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.as_str())
            );
            let back: Color = serde_json::from_value(serde_json::json!(c.as_str())).unwrap();
            assert_eq!(back, c);
        }
        assert_eq!(Color::NAMES, ["red", "dark-blue"]);
        assert_eq!(
            "blue".parse::<Color>().unwrap_err().to_string(),
            "expected one of red | dark-blue"
        );
    }
}
