//! Blueprint parameters: their declared types and bounds, and the deterministic
//! substitution of their values into the blueprint's body.
//!
//! A body string that is exactly one `{{ expr }}` becomes the expression's typed value
//! (`"{{ users * 10 }}"` becomes the number 1000); `{{ expr }}` inside a longer string is
//! replaced by the value's text. Expressions are integer arithmetic over integer
//! parameters (`+ - * / %`, parentheses, checked for overflow and division by zero) or
//! a bare parameter name of any type. Nothing else is evaluated: no functions, no
//! loops, no access to anything but the declared parameters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::Watch;
use crate::limits;

/// A parameter's declared type and bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ParamSpec {
    /// An integer in `min..=max`.
    Int {
        /// The least value allowed.
        min: i64,
        /// The greatest value allowed.
        max: i64,
        /// The value used when a contract gives none; `None`: the contract must give one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<i64>,
        /// What the parameter means, for the consumer; empty when absent.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
    },
    /// A string of at most `max_len` characters matching `pattern` (anchored at both ends).
    String {
        /// A regular expression (regex-lite syntax) the whole value must match.
        pattern: String,
        /// The most characters (Unicode scalar values) the value may have.
        max_len: usize,
        /// The value used when a contract gives none; `None`: the contract must give one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
        /// What the parameter means, for the consumer; empty when absent.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
    },
    /// One of a fixed list of strings.
    Enum {
        /// The strings allowed; at least one.
        values: Vec<String>,
        /// The value used when a contract gives none; `None`: the contract must give one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
        /// What the parameter means, for the consumer; empty when absent.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
    },
    /// true or false.
    Bool {
        /// The value used when a contract gives none; `None`: the contract must give one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<bool>,
        /// What the parameter means, for the consumer; empty when absent.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
    },
}

/// Why a parameter value or a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A value is of the wrong type or outside its declared bounds.
    #[error("parameter {name:?}: {reason}")]
    OutOfBounds {
        /// The parameter.
        name: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The contract gives a value for a parameter the blueprint does not declare.
    #[error("parameter {0:?} is not declared by the blueprint")]
    Unknown(String),
    /// The contract gives no value for a parameter that has no default.
    #[error("parameter {0:?} is required (it has no default)")]
    Missing(String),
    /// The blueprint's declaration itself is wrong (bounds, pattern, default).
    #[error("parameter {name:?} is declared wrongly: {reason}")]
    BadSpec {
        /// The parameter.
        name: String,
        /// What is wrong with its declaration.
        reason: String,
    },
    /// A `{{ expr }}` in the body cannot be evaluated.
    #[error("template at {path}: {reason}")]
    Template {
        /// The JSON path of the string holding the expression.
        path: String,
        /// Why it cannot be evaluated (syntax, unknown name, overflow, ...).
        reason: String,
    },
}

impl ParamSpec {
    /// Checks the declaration itself (bounds ordered, pattern compiles, default in bounds).
    pub fn check(&self, name: &str) -> Result<(), ParamError> {
        let bad = |reason: String| ParamError::BadSpec {
            name: name.to_string(),
            reason,
        };
        match self {
            ParamSpec::Int { min, max, .. } if min > max => {
                return Err(bad(format!("min {min} > max {max}")))
            }
            ParamSpec::String { pattern, .. } => {
                compile(pattern).map_err(|e| bad(format!("pattern: {e}")))?;
            }
            ParamSpec::Enum { values, .. } if values.is_empty() => {
                return Err(bad("enum has no values".into()))
            }
            _ => {}
        }
        if let Some(default) = self.default() {
            self.validate(name, &default)
                .map_err(|e| bad(format!("default: {e}")))?;
        }
        Ok(())
    }

    /// The declared default, as a JSON value.
    pub fn default(&self) -> Option<Value> {
        match self {
            ParamSpec::Int { default, .. } => default.map(Value::from),
            ParamSpec::String { default, .. } | ParamSpec::Enum { default, .. } => {
                default.clone().map(Value::from)
            }
            ParamSpec::Bool { default, .. } => default.map(Value::from),
        }
    }

    /// A value inside the bounds, used to test-expand a blueprint when it is signed.
    pub fn example(&self) -> Option<Value> {
        self.default().or_else(|| match self {
            ParamSpec::Int { min, .. } => Some(Value::from(*min)),
            ParamSpec::Enum { values, .. } => values.first().cloned().map(Value::from),
            ParamSpec::Bool { .. } => Some(Value::from(false)),
            ParamSpec::String { .. } => None,
        })
    }

    /// Checks one value against the declaration.
    pub fn validate(&self, name: &str, value: &Value) -> Result<(), ParamError> {
        let out = |reason: String| ParamError::OutOfBounds {
            name: name.to_string(),
            reason,
        };
        match (self, value) {
            (ParamSpec::Int { min, max, .. }, Value::Number(n)) => match n.as_i64() {
                Some(i) if (*min..=*max).contains(&i) => Ok(()),
                Some(i) => Err(out(format!("{i} is not in {min}..={max}"))),
                None => Err(out(format!("{n} is not an integer"))),
            },
            (
                ParamSpec::String {
                    pattern, max_len, ..
                },
                Value::String(s),
            ) => {
                let len = s.chars().count();
                if len > *max_len {
                    return Err(out(format!("{len} characters, at most {max_len} allowed")));
                }
                let re = compile(pattern).map_err(|e| out(format!("pattern: {e}")))?;
                if re.is_match(s) {
                    Ok(())
                } else {
                    Err(out(format!("{s:?} does not match /{pattern}/")))
                }
            }
            (ParamSpec::Enum { values, .. }, Value::String(s)) => {
                if values.contains(s) {
                    Ok(())
                } else {
                    Err(out(format!("{s:?} is not one of {values:?}")))
                }
            }
            (ParamSpec::Bool { .. }, Value::Bool(_)) => Ok(()),
            (spec, v) => Err(out(format!("expected {}, got {v}", spec.type_name()))),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            ParamSpec::Int { .. } => "an integer",
            ParamSpec::String { .. } => "a string",
            ParamSpec::Enum { .. } => "one of the enum's strings",
            ParamSpec::Bool { .. } => "true or false",
        }
    }
}

fn compile(pattern: &str) -> Result<regex_lite::Regex, regex_lite::Error> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
}

/// Checks `given` against `specs` and fills in defaults: the complete parameter set.
/// Every problem is returned, not just the first.
pub fn resolve(
    specs: &BTreeMap<String, ParamSpec>,
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, Vec<ParamError>> {
    let mut errors = Vec::new();
    for name in given.keys() {
        if !specs.contains_key(name) {
            errors.push(ParamError::Unknown(name.clone()));
        }
    }
    let mut out = BTreeMap::new();
    for (name, spec) in specs {
        match given.get(name).cloned().or_else(|| spec.default()) {
            Some(v) => match spec.validate(name, &v) {
                Ok(()) => {
                    out.insert(name.clone(), v);
                }
                Err(e) => errors.push(e),
            },
            None => errors.push(ParamError::Missing(name.clone())),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Substitutes `params` into every string of `template`. Object keys are not touched.
#[cfg(test)]
pub(crate) fn expand(
    template: &Value,
    params: &BTreeMap<String, Value>,
) -> Result<Value, ParamError> {
    expand_watched(template, params, None)
}

/// [`expand`], noting in `watch` whether a value of the result breaks its bounds (or
/// may: a value substituted whole that is a list or an object counts as breaking one).
pub(crate) fn expand_watched(
    template: &Value,
    params: &BTreeMap<String, Value>,
    watch: Option<&Watch>,
) -> Result<Value, ParamError> {
    // `path` grows and shrinks in place: only an error needs it, as text. `depth` is
    // the depth of `v`'s expansion in the result, the result's being 1.
    fn walk(
        v: &Value,
        params: &BTreeMap<String, Value>,
        path: &mut String,
        depth: usize,
        watch: Option<&Watch>,
    ) -> Result<Value, ParamError> {
        if let Some(w) = watch {
            w.depth(depth);
        }
        let expanded = match v {
            Value::String(s) => {
                let expanded = expand_string(s, params).map_err(|reason| ParamError::Template {
                    path: path.clone(),
                    reason,
                })?;
                if let Some(w) = watch {
                    match &expanded {
                        Value::String(s) => w.text(s),
                        Value::Array(_) | Value::Object(_) => w.set_broken(),
                        Value::Null | Value::Bool(_) | Value::Number(_) => {}
                    }
                }
                expanded
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let len = path.len();
                        limits::push_index(path, i);
                        let expanded = walk(item, params, path, depth + 1, watch)?;
                        path.truncate(len);
                        Ok(expanded)
                    })
                    .collect::<Result<_, ParamError>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, item)| {
                        let len = path.len();
                        path.push('.');
                        path.push_str(k);
                        if let Some(w) = watch {
                            w.text(k);
                        }
                        let expanded = walk(item, params, path, depth + 1, watch)?;
                        path.truncate(len);
                        Ok((k.clone(), expanded))
                    })
                    .collect::<Result<_, ParamError>>()?,
            ),
            other => other.clone(),
        };
        if let Some(w) = watch {
            match &expanded {
                Value::Array(items) if v.is_array() => w.items(items.len()),
                Value::Object(map) if v.is_object() => w.items(map.len()),
                _ => {}
            }
        }
        Ok(expanded)
    }
    walk(template, params, &mut String::from("$.body"), 1, watch)
}

fn expand_string(s: &str, params: &BTreeMap<String, Value>) -> Result<Value, String> {
    let trimmed = s.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
    {
        if !inner.contains("{{") && !inner.contains("}}") && trimmed.len() == s.len() {
            return eval(inner, params);
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed '{{'")?;
        match eval(&after[..end], params)? {
            Value::String(text) => out.push_str(&text),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err("'}}' without '{{'".into());
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Evaluates one expression: a bare parameter name (any type) or integer arithmetic.
fn eval(expr: &str, params: &BTreeMap<String, Value>) -> Result<Value, String> {
    let tokens = tokenize(expr)?;
    if let [Token::Ident(name)] = tokens.as_slice() {
        return params
            .get(name)
            .cloned()
            .ok_or_else(|| format!("unknown parameter {name:?}"));
    }
    let mut parser = Parser {
        tokens: &tokens,
        pos: 0,
        params,
    };
    let v = parser.sum()?;
    if parser.pos != tokens.len() {
        return Err(format!("unexpected token in {:?}", expr.trim()));
    }
    // Documents hold integers within ±(2^53-1) only; so does an expansion.
    if v.unsigned_abs() > crate::canonical::MAX_SAFE_INTEGER {
        return Err(format!("{v} is outside ±(2^53-1)"));
    }
    Ok(Value::from(v))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(i64),
    Ident(String),
    Op(char),
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() {
            let mut n: i64 = 0;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(d as i64))
                    .ok_or("number too large")?;
                chars.next();
            }
            tokens.push(Token::Num(n));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut id = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
                id.push(c);
                chars.next();
            }
            tokens.push(Token::Ident(id));
        } else if "+-*/%()".contains(c) {
            tokens.push(Token::Op(c));
            chars.next();
        } else {
            return Err(format!("unexpected character {c:?} in expression"));
        }
    }
    if tokens.is_empty() {
        return Err("empty expression".into());
    }
    Ok(tokens)
}

/// Recursive descent: sum := product (('+'|'-') product)*; product := atom (('*'|'/'|'%') atom)*;
/// atom := number | integer parameter | '(' sum ')' | '-' atom.
struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    params: &'a BTreeMap<String, Value>,
}

impl Parser<'_> {
    fn peek_op(&self) -> Option<char> {
        match self.tokens.get(self.pos) {
            Some(Token::Op(c)) => Some(*c),
            _ => None,
        }
    }

    fn sum(&mut self) -> Result<i64, String> {
        let mut acc = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek_op() {
            self.pos += 1;
            let rhs = self.product()?;
            acc = if op == '+' {
                acc.checked_add(rhs)
            } else {
                acc.checked_sub(rhs)
            }
            .ok_or("integer overflow")?;
        }
        Ok(acc)
    }

    fn product(&mut self) -> Result<i64, String> {
        let mut acc = self.atom()?;
        while let Some(op @ ('*' | '/' | '%')) = self.peek_op() {
            self.pos += 1;
            let rhs = self.atom()?;
            acc = match op {
                '*' => acc.checked_mul(rhs).ok_or("integer overflow")?,
                _ if rhs == 0 => return Err("division by zero".into()),
                '/' => acc.checked_div(rhs).ok_or("integer overflow")?,
                _ => acc.checked_rem(rhs).ok_or("integer overflow")?,
            };
        }
        Ok(acc)
    }

    fn atom(&mut self) -> Result<i64, String> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or("expression ends early")?;
        self.pos += 1;
        match token {
            Token::Num(n) => Ok(n),
            Token::Ident(name) => match self.params.get(&name) {
                Some(Value::Number(n)) => n
                    .as_i64()
                    .ok_or_else(|| format!("{name} is not an integer")),
                Some(_) => Err(format!(
                    "parameter {name:?} is not an integer; use it alone as {{{{ {name} }}}}"
                )),
                None => Err(format!("unknown parameter {name:?}")),
            },
            Token::Op('(') => {
                let v = self.sum()?;
                if self.peek_op() != Some(')') {
                    return Err("missing ')'".into());
                }
                self.pos += 1;
                Ok(v)
            }
            Token::Op('-') => self
                .atom()?
                .checked_neg()
                .ok_or_else(|| "integer overflow".into()),
            Token::Op(c) => Err(format!("unexpected {c:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("users".to_string(), json!(100)),
            ("region".to_string(), json!("ch")),
            ("tls".to_string(), json!(true)),
        ])
    }

    #[test]
    fn a_watched_expansion_sees_what_the_walk_refuses() {
        let limits = crate::Limits {
            string_chars: 4,
            collection_items: 2,
            depth: 3,
            ..crate::Limits::default()
        };
        let mut given = params();
        given.insert("list".into(), json!([1]));
        for (template, breaks) in [
            (
                json!({"a": "{{ region }}", "b": ["{{ users }}", "x"]}),
                false,
            ),
            (json!({"a": "{{ users * 1000 }}", "b": "{{ tls }}"}), false),
            (json!({"a": "{{ region }}{{ region }}{{ region }}"}), true),
            (json!({"a": "ab{{ region }}"}), false),
            (json!({"longer": 1}), true),
            (json!({"a": [1, 2, 3]}), true),
            (json!({"a": 1, "b": 2, "c": 3}), true),
            (json!({"a": {"b": {"c": "{{ users }}"}}}), true),
            (json!({"a": {"b": "{{ users }}"}}), false),
            (json!({"a": {"b": {}}}), false),
            (json!({"a": {"b": []}}), false),
        ] {
            let watch = Watch::new(limits.string_chars, limits.collection_items, limits.depth);
            let expanded = expand_watched(&template, &given, Some(&watch)).unwrap();
            let refused = crate::limits::check_value(&expanded, &limits).is_err();
            assert_eq!((watch.broken(), refused), (breaks, breaks), "{template}");
        }
        // A list or an object substituted whole counts as breaking a bound: the walk
        // decides.
        let watch = Watch::new(4, 2, 3);
        expand_watched(&json!({"a": "{{ list }}"}), &given, Some(&watch)).unwrap();
        assert!(watch.broken());
    }

    #[test]
    fn whole_string_expression_is_typed() {
        let t = json!({"mem": "{{ users * 10 + 256 }}", "r": "{{region}}", "tls": "{{ tls }}"});
        assert_eq!(
            expand(&t, &params()).unwrap(),
            json!({"mem": 1256, "r": "ch", "tls": true})
        );
    }

    #[test]
    fn interpolation_inside_strings() {
        let t = json!([
            "crm-{{region}}-{{ users / 3 }}",
            "plain",
            "a{{ (users - 1) % 7 }}b"
        ]);
        assert_eq!(
            expand(&t, &params()).unwrap(),
            json!(["crm-ch-33", "plain", "a1b"])
        );
    }

    #[test]
    fn template_errors_name_their_path_after_siblings() {
        // The path of the first bad string, after siblings and nested members it passed.
        let t = json!({"a": [{"b": ["{{ users }}", {"c": 1}, "{{ nope }}"]}], "z": "{{ nope }}"});
        match expand(&t, &params()) {
            Err(ParamError::Template { path, .. }) => assert_eq!(path, "$.body.a[0].b[2]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn template_errors_name_their_path() {
        for (t, reason) in [
            (json!({"a": ["{{ nope }}"]}), "unknown parameter \"nope\""),
            (json!({"a": ["{{ users / 0 }}"]}), "division by zero"),
            (json!({"a": ["{{ region * 2 }}"]}), "is not an integer"),
            (json!({"a": ["x {{ users"]}), "unclosed"),
            (
                json!({"a": ["{{ 9223372036854775807 + users }}"]}),
                "overflow",
            ),
            (json!({"a": ["{{ users ; }}"]}), "unexpected character"),
            (
                json!({"a": ["{{ 9007199254740991 + users }}"]}),
                "outside ±(2^53-1)",
            ),
        ] {
            match expand(&t, &params()) {
                Err(ParamError::Template { path, reason: r }) => {
                    assert_eq!(path, "$.body.a[0]");
                    assert!(r.contains(reason), "{r} should contain {reason}");
                }
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let specs: BTreeMap<String, ParamSpec> = serde_json::from_value(json!({
            "users": {"type": "int", "min": 1, "max": 1000},
            "region": {"type": "enum", "values": ["ch", "be"], "default": "ch"},
            "domain": {"type": "string", "pattern": "[a-z0-9.-]+", "max_len": 20},
        }))
        .unwrap();
        let given = |v: Value| serde_json::from_value::<BTreeMap<String, Value>>(v).unwrap();
        let ok = resolve(&specs, &given(json!({"users": 5, "domain": "a.ch"}))).unwrap();
        assert_eq!(ok["region"], json!("ch"));
        let errs = resolve(
            &specs,
            &given(json!({"users": 1001, "domain": "A.CH", "extra": 1, "region": "us"})),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.contains(&ParamError::Unknown("extra".into())));
        let errs = resolve(&specs, &given(json!({"domain": "x"}))).unwrap_err();
        assert_eq!(errs, vec![ParamError::Missing("users".into())]);
        // The pattern is anchored: a match in the middle is not enough.
        let errs = resolve(&specs, &given(json!({"users": 1, "domain": "ok/../x"}))).unwrap_err();
        assert!(matches!(&errs[0], ParamError::OutOfBounds { name, .. } if name == "domain"));
    }

    #[test]
    fn bad_declarations_are_refused() {
        let bad: ParamSpec =
            serde_json::from_value(json!({"type": "int", "min": 5, "max": 1})).unwrap();
        assert!(matches!(bad.check("n"), Err(ParamError::BadSpec { .. })));
        let bad: ParamSpec =
            serde_json::from_value(json!({"type": "int", "min": 1, "max": 5, "default": 9}))
                .unwrap();
        assert!(matches!(bad.check("n"), Err(ParamError::BadSpec { .. })));
    }
}
