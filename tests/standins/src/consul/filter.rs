//! Consul's `filter` query parameter for `GET /v1/catalog/service/:service` and
//! `GET /v1/health/service/:service`.
//!
//! Follows developer.hashicorp.com/consul/api-docs/features/filtering (operators, values,
//! boolean logic, precedence) and the selector tables of "List Nodes for Service" in
//! developer.hashicorp.com/consul/api-docs/catalog and of "List Service Instances for
//! Service" in developer.hashicorp.com/consul/api-docs/health (`Node.*` and `Service.*`;
//! the `Checks.*` selectors, which reach into a list, are refused as not supported here).
//! Values are quoted strings ("..." or
//! `...`), numbers or identifiers, as the filtering document describes. `matches` (regular
//! expressions) is not implemented and is refused like a syntax error. A refused expression
//! gives the message Consul's evaluator gives, "Failed to create boolean expression
//! evaluator: ...", which Consul answers with status 500 (hashicorp/consul issues 7338, 9441).

use std::collections::BTreeMap;

use super::{CatalogEntry, Endpoint};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expression {
    Or(Box<Expression>, Box<Expression>),
    And(Box<Expression>, Box<Expression>),
    Not(Box<Expression>),
    Match(Match),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Match {
    selector: Selector,
    operator: Operator,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    Equal,
    NotEqual,
    IsEmpty,
    IsNotEmpty,
    In,
    NotIn,
}

/// The documented selectors of the endpoint that this stand-in can evaluate.
#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Text(TextField),
    Port,
    EnableTagOverride,
    Tags,
    Map(MapField),
    MapKey(MapField, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TextField {
    Id,
    Node,
    Address,
    Datacenter,
    ServiceId,
    ServiceName,
    ServiceAddress,
    ServiceKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MapField {
    NodeMeta,
    ServiceMeta,
    TaggedAddresses,
}

/// Parses `source` with the selectors of `endpoint`.
pub(crate) fn parse(source: &str, endpoint: Endpoint) -> Result<Expression, String> {
    let mut parser = Parser {
        source,
        position: 0,
        endpoint,
    };
    let expression = parser.or()?;
    parser.skip_whitespace();
    if parser.position < source.len() {
        return Err(parser.error("unexpected input, expected: \"and\", \"or\" or EOF"));
    }
    Ok(expression)
}

impl Expression {
    pub(crate) fn matches(&self, entry: &CatalogEntry) -> bool {
        match self {
            Expression::Or(left, right) => left.matches(entry) || right.matches(entry),
            Expression::And(left, right) => left.matches(entry) && right.matches(entry),
            Expression::Not(inner) => !inner.matches(entry),
            Expression::Match(matcher) => matcher.matches(entry),
        }
    }
}

enum Resolved<'a> {
    Text(&'a str),
    Number(u16),
    Bool(bool),
    List(&'a [String]),
    Map(&'a BTreeMap<String, String>),
    Missing,
}

impl Match {
    fn matches(&self, entry: &CatalogEntry) -> bool {
        let resolved = resolve(&self.selector, entry);
        match self.operator {
            Operator::Equal => equals(&resolved, &self.value),
            Operator::NotEqual => !equals(&resolved, &self.value),
            Operator::IsEmpty => is_empty(&resolved),
            Operator::IsNotEmpty => !is_empty(&resolved),
            Operator::In => contains(&resolved, &self.value),
            Operator::NotIn => !contains(&resolved, &self.value),
        }
    }
}

fn resolve<'a>(selector: &Selector, entry: &'a CatalogEntry) -> Resolved<'a> {
    let instance = &entry.instance;
    match selector {
        Selector::Text(field) => Resolved::Text(match field {
            TextField::Id => &entry.node_id,
            TextField::Node => &instance.node,
            TextField::Address => &instance.node_address,
            TextField::Datacenter => &instance.datacenter,
            TextField::ServiceId => &instance.id,
            TextField::ServiceName => &instance.service,
            TextField::ServiceAddress => &instance.address,
            TextField::ServiceKind => "",
        }),
        Selector::Port => Resolved::Number(instance.port),
        Selector::EnableTagOverride => Resolved::Bool(false),
        Selector::Tags => Resolved::List(&instance.tags),
        Selector::Map(field) => Resolved::Map(map_of(*field, entry)),
        Selector::MapKey(field, key) => match map_of(*field, entry).get(key) {
            Some(value) => Resolved::Text(value),
            None => Resolved::Missing,
        },
    }
}

fn map_of(field: MapField, entry: &CatalogEntry) -> &BTreeMap<String, String> {
    match field {
        MapField::NodeMeta => &entry.node_meta,
        MapField::ServiceMeta => &entry.instance.meta,
        MapField::TaggedAddresses => &entry.tagged_addresses,
    }
}

fn equals(resolved: &Resolved<'_>, value: &str) -> bool {
    match resolved {
        Resolved::Text(text) => *text == value,
        Resolved::Number(number) => value.parse::<u16>().is_ok_and(|v| v == *number),
        Resolved::Bool(flag) => value.parse::<bool>().is_ok_and(|v| v == *flag),
        Resolved::List(_) | Resolved::Map(_) | Resolved::Missing => false,
    }
}

fn is_empty(resolved: &Resolved<'_>) -> bool {
    match resolved {
        Resolved::Text(text) => text.is_empty(),
        Resolved::List(list) => list.is_empty(),
        Resolved::Map(map) => map.is_empty(),
        Resolved::Number(_) | Resolved::Bool(_) => false,
        Resolved::Missing => true,
    }
}

fn contains(resolved: &Resolved<'_>, value: &str) -> bool {
    match resolved {
        Resolved::Text(text) => text.contains(value),
        Resolved::List(list) => list.iter().any(|item| item == value),
        Resolved::Map(map) => map.contains_key(value),
        Resolved::Number(_) | Resolved::Bool(_) | Resolved::Missing => false,
    }
}

struct Parser<'a> {
    source: &'a str,
    position: usize,
    endpoint: Endpoint,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> String {
        // The evaluator reports line:column (offset), 1-based column.
        format!("1:{} ({}): {message}", self.position + 1, self.position)
    }

    fn rest(&self) -> &str {
        &self.source[self.position..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.position += rest.len() - rest.trim_start().len();
    }

    /// Consumes `keyword` if it is next as a whole word.
    fn keyword(&mut self, keyword: &str) -> bool {
        self.skip_whitespace();
        let rest = self.rest();
        let whole_word = rest.starts_with(keyword)
            && rest[keyword.len()..]
                .chars()
                .next()
                .is_none_or(|c| !is_identifier_char(c));
        if whole_word {
            self.position += keyword.len();
            true
        } else {
            false
        }
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        self.skip_whitespace();
        if self.rest().starts_with(symbol) {
            self.position += symbol.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expression, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expression::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expression, String> {
        let mut left = self.not()?;
        while self.keyword("and") {
            left = Expression::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expression, String> {
        if self.keyword("not") {
            return Ok(Expression::Not(Box::new(self.not()?)));
        }
        if self.symbol("(") {
            let inner = self.or()?;
            if !self.symbol(")") {
                return Err(self.error("no match found, expected: \")\""));
            }
            return Ok(inner);
        }
        self.matcher().map(Expression::Match)
    }

    fn matcher(&mut self) -> Result<Match, String> {
        self.skip_whitespace();
        // `"<value>" [not] in <selector>` starts with a value; every other form with a selector.
        if self.rest().starts_with(['"', '`'])
            || self.rest().starts_with(|c: char| c.is_ascii_digit())
        {
            let value = self.value()?;
            let operator = if self.keyword("not") {
                Operator::NotIn
            } else {
                Operator::In
            };
            if !self.keyword("in") {
                return Err(self.error("no match found, expected: \"in\" or \"not in\""));
            }
            let selector = self.selector()?;
            return Ok(Match {
                selector,
                operator,
                value,
            });
        }
        let selector_start = self.position;
        let selector = self.selector()?;
        let (operator, value) = if self.symbol("==") {
            (Operator::Equal, self.value()?)
        } else if self.symbol("!=") {
            (Operator::NotEqual, self.value()?)
        } else if self.keyword("is") {
            let operator = if self.keyword("not") {
                Operator::IsNotEmpty
            } else {
                Operator::IsEmpty
            };
            if !self.keyword("empty") {
                return Err(self.error("no match found, expected: \"empty\" or \"not empty\""));
            }
            (operator, String::new())
        } else if self.keyword("contains") {
            (Operator::In, self.value()?)
        } else if self.keyword("not") && self.keyword("contains") {
            (Operator::NotIn, self.value()?)
        } else if self.keyword("matches") {
            return Err(self.error("\"matches\" is not supported by this Consul stand-in"));
        } else {
            return Err(self.error(
                "no match found, expected: \"!=\", \"==\", \"contains\", \"is\", \"not\", \".\", \"[\" or [a-zA-Z0-9_]",
            ));
        };
        if matches!(operator, Operator::Equal | Operator::NotEqual)
            && matches!(selector, Selector::Tags | Selector::Map(_))
        {
            self.position = selector_start;
            return Err(self.error("Invalid match operator for a collection selector"));
        }
        Ok(Match {
            selector,
            operator,
            value,
        })
    }

    fn identifier(&mut self) -> Option<&str> {
        self.skip_whitespace();
        let rest = self.rest();
        let length = rest
            .find(|c: char| !is_identifier_char(c))
            .unwrap_or(rest.len());
        if length == 0 {
            return None;
        }
        let start = self.position;
        self.position += length;
        Some(&self.source[start..start + length])
    }

    /// A selector: an identifier, then `.identifier` or `["key"]` parts.
    fn selector(&mut self) -> Result<Selector, String> {
        let start = self.position;
        let Some(first) = self.identifier().map(str::to_owned) else {
            return Err(self.error("no match found, expected: a selector"));
        };
        let mut path = vec![first];
        loop {
            if self.rest().starts_with('.') {
                self.position += 1;
                match self.identifier() {
                    Some(part) => path.push(part.to_owned()),
                    None => return Err(self.error("no match found, expected: [a-zA-Z0-9_]")),
                }
            } else if self.rest().starts_with('[') {
                self.position += 1;
                path.push(self.quoted()?);
                if !self.symbol("]") {
                    return Err(self.error("no match found, expected: \"]\""));
                }
            } else {
                break;
            }
        }
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let selector = match self.endpoint {
            Endpoint::Catalog => catalog_selector(&path),
            Endpoint::Health => health_selector(&path),
        };
        selector.ok_or_else(|| {
            let text = self.source[start..self.position].trim().to_owned();
            self.position = start;
            if self.endpoint == Endpoint::Health && path[0] == "Checks" {
                format!("Selector {text:?} is not supported by this Consul stand-in")
            } else {
                format!("Selector {text:?} is not valid")
            }
        })
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.skip_whitespace();
        let rest = self.rest();
        let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '`') else {
            return Err(self.error("no match found, expected: a quoted string"));
        };
        let mut value = String::new();
        let mut chars = rest[1..].char_indices();
        while let Some((offset, c)) = chars.next() {
            if c == quote {
                self.position += 1 + offset + 1;
                return Ok(value);
            }
            if c == '\\' && quote == '"' {
                match chars.next() {
                    Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    _ => return Err(self.error("invalid escape sequence in string")),
                }
            } else {
                value.push(c);
            }
        }
        Err(self.error("unterminated string"))
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_whitespace();
        if self.rest().starts_with(['"', '`']) {
            return self.quoted();
        }
        match self.identifier() {
            Some(word) => Ok(word.to_owned()),
            None => Err(self.error("no match found, expected: a value")),
        }
    }
}

/// Selectors of "List Nodes for Service": flat names, maps with one key.
fn catalog_selector(path: &[&str]) -> Option<Selector> {
    Some(match path {
        ["ID"] => Selector::Text(TextField::Id),
        ["Node"] => Selector::Text(TextField::Node),
        ["Address"] => Selector::Text(TextField::Address),
        ["Datacenter"] => Selector::Text(TextField::Datacenter),
        ["ServiceID"] => Selector::Text(TextField::ServiceId),
        ["ServiceName"] => Selector::Text(TextField::ServiceName),
        ["ServiceAddress"] => Selector::Text(TextField::ServiceAddress),
        ["ServiceKind"] => Selector::Text(TextField::ServiceKind),
        ["ServicePort"] => Selector::Port,
        ["ServiceEnableTagOverride"] => Selector::EnableTagOverride,
        ["ServiceTags"] => Selector::Tags,
        [map] => Selector::Map(catalog_map(map)?),
        [map, key] => Selector::MapKey(catalog_map(map)?, (*key).to_owned()),
        _ => return None,
    })
}

fn catalog_map(name: &str) -> Option<MapField> {
    match name {
        "NodeMeta" => Some(MapField::NodeMeta),
        "ServiceMeta" => Some(MapField::ServiceMeta),
        "TaggedAddresses" => Some(MapField::TaggedAddresses),
        _ => None,
    }
}

/// Selectors of "List Service Instances for Service": `Node.<field>` and
/// `Service.<field>`, maps with one key more.
fn health_selector(path: &[&str]) -> Option<Selector> {
    Some(match path {
        ["Node", "ID"] => Selector::Text(TextField::Id),
        ["Node", "Node"] => Selector::Text(TextField::Node),
        ["Node", "Address"] => Selector::Text(TextField::Address),
        ["Node", "Datacenter"] => Selector::Text(TextField::Datacenter),
        ["Service", "ID"] => Selector::Text(TextField::ServiceId),
        ["Service", "Service"] => Selector::Text(TextField::ServiceName),
        ["Service", "Address"] => Selector::Text(TextField::ServiceAddress),
        ["Service", "Kind"] => Selector::Text(TextField::ServiceKind),
        ["Service", "Port"] => Selector::Port,
        ["Service", "EnableTagOverride"] => Selector::EnableTagOverride,
        ["Service", "Tags"] => Selector::Tags,
        [owner, map] => Selector::Map(health_map(owner, map)?),
        [owner, map, key] => Selector::MapKey(health_map(owner, map)?, (*key).to_owned()),
        _ => return None,
    })
}

fn health_map(owner: &str, name: &str) -> Option<MapField> {
    match (owner, name) {
        ("Node", "Meta") => Some(MapField::NodeMeta),
        ("Node", "TaggedAddresses") => Some(MapField::TaggedAddresses),
        ("Service", "Meta") => Some(MapField::ServiceMeta),
        _ => None,
    }
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}
