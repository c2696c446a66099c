//! Deterministic recognizers for personal data (PII) and secrets.
//!
//! A [`Scanner`] is built once per policy from the enabled [`BuiltinEntity`] values and
//! the policy's [`CustomEntity`] regexes, and is then shared between requests.
//! [`Scanner::scan`] finds candidates with cheap byte searches instead of running one
//! regex per entity over the text. One pass over the ASCII digit runs serves phone
//! numbers, payment cards, IBANs, US SSNs and IPv4 addresses. `memchr` finds `@` for
//! email and `:` for IPv6, and one Aho-Corasick search finds secret prefixes.
//! Hand-written checks then validate each candidate. The module of each recognizer
//! lists what it accepts and rejects: `email`, `phone`, `card`, `iban`, `numbers` (US
//! SSN), `ip`, `secrets` and `custom`.
//!
//! Builtin matches start and end next to ASCII bytes, so their offsets are char
//! boundaries. Only ASCII letters and digits form tokens. Other characters (CJK, emoji,
//! full-width digits) count as separators, so `电话415-555-2671` contains a phone number
//! and full-width digits are never part of a match.

mod boundary;
mod card;
mod custom;
mod email;
mod iban;
mod ip;
mod numbers;
mod phone;
mod secrets;
mod tail;
mod transform;
mod validators;

use std::cmp::Reverse;

pub use transform::{HashKey, mask, redact_placeholder};

use custom::CustomRecognizer;
use secrets::SecretFinder;

/// An entity that the crate recognizes without configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuiltinEntity {
    Email,
    Phone,
    CreditCard,
    Iban,
    UsSsn,
    IpAddress,
    Secret,
}

impl BuiltinEntity {
    pub const ALL: [BuiltinEntity; 7] = [
        BuiltinEntity::Email,
        BuiltinEntity::Phone,
        BuiltinEntity::CreditCard,
        BuiltinEntity::Iban,
        BuiltinEntity::UsSsn,
        BuiltinEntity::IpAddress,
        BuiltinEntity::Secret,
    ];

    /// Returns the name used in policies, findings and placeholders, such as `EMAIL`.
    pub fn name(self) -> &'static str {
        match self {
            BuiltinEntity::Email => "EMAIL",
            BuiltinEntity::Phone => "PHONE",
            BuiltinEntity::CreditCard => "CREDIT_CARD",
            BuiltinEntity::Iban => "IBAN",
            BuiltinEntity::UsSsn => "US_SSN",
            BuiltinEntity::IpAddress => "IP_ADDRESS",
            BuiltinEntity::Secret => "SECRET",
        }
    }

    /// Returns the entity with exactly this upper-case name.
    pub fn from_name(name: &str) -> Option<Self> {
        BuiltinEntity::ALL
            .into_iter()
            .find(|entity| entity.name() == name)
    }

    /// Rank on ties between overlapping matches of equal length; lower wins.
    fn priority(self) -> u8 {
        match self {
            BuiltinEntity::Secret => 0,
            BuiltinEntity::CreditCard => 1,
            BuiltinEntity::Iban => 2,
            BuiltinEntity::UsSsn => 3,
            BuiltinEntity::Email => 4,
            BuiltinEntity::IpAddress => 5,
            BuiltinEntity::Phone => 6,
        }
    }
}

/// A builtin entity or a custom one, identified by its index in the custom list given
/// to [`Scanner::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    Builtin(BuiltinEntity),
    Custom(u16),
}

impl Entity {
    /// Rank on ties between overlapping matches of equal length; lower wins. Custom
    /// entities rank after all builtins, in list order.
    fn priority(self) -> u32 {
        match self {
            Entity::Builtin(builtin) => u32::from(builtin.priority()),
            Entity::Custom(index) => 16 + u32::from(index),
        }
    }
}

/// A policy-defined entity: a regex plus optional context words (see the `custom`
/// module for the matching rules).
#[derive(Clone, Debug)]
pub struct CustomEntity {
    pub name: String,
    /// Pattern in `regex` crate syntax.
    pub pattern: String,
    /// Words of which one must occur within 64 bytes of a match; empty means every match
    /// counts.
    pub context_words: Vec<String>,
}

/// A recognized value: byte offsets into the scanned text, on char boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiiMatch {
    pub entity: Entity,
    pub start: usize,
    pub end: usize,
}

/// Errors from building a [`Scanner`].
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    #[error("custom entity {entity:?} has an invalid pattern: {source}")]
    InvalidPattern {
        entity: String,
        source: regex::Error,
    },
    #[error("the context words of custom entity {entity:?} do not compile: {source}")]
    InvalidContextWords {
        entity: String,
        source: regex::Error,
    },
    #[error("too many custom entities: {count} given, at most {max} are supported")]
    TooManyCustomEntities { count: usize, max: usize },
    #[error("failed to build the secret prefix search: {0}")]
    SecretPrefixes(#[from] aho_corasick::BuildError),
}

/// Set of enabled builtin entities, one bit per variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BuiltinSet(u8);

impl BuiltinSet {
    fn from_slice(entities: &[BuiltinEntity]) -> Self {
        BuiltinSet(entities.iter().fold(0, |bits, &e| bits | Self::bit(e)))
    }

    fn contains(self, entity: BuiltinEntity) -> bool {
        self.0 & Self::bit(entity) != 0
    }

    fn bit(entity: BuiltinEntity) -> u8 {
        1 << entity as u8
    }
}

/// A match before overlap resolution.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    entity: Entity,
    start: usize,
    end: usize,
}

impl Candidate {
    fn builtin(entity: BuiltinEntity, start: usize, end: usize) -> Self {
        Candidate {
            entity: Entity::Builtin(entity),
            start,
            end,
        }
    }
}

/// Recognizers compiled for one policy. The scanner is `Send + Sync` and scans through
/// `&self`, so one instance can be shared behind an `Arc`.
#[derive(Debug)]
pub struct Scanner {
    builtins: BuiltinSet,
    secrets: Option<SecretFinder>,
    custom: Vec<CustomRecognizer>,
}

impl Scanner {
    /// Builds a scanner for the given builtin entities and custom entities. Duplicate
    /// builtins are ignored. `Entity::Custom(i)` refers to `custom[i]`.
    ///
    /// Fails when a custom pattern or its context words do not compile, or when there
    /// are more than 65 536 custom entities.
    pub fn new(
        builtins: &[BuiltinEntity],
        custom: &[CustomEntity],
    ) -> Result<Scanner, ScannerError> {
        let builtins = BuiltinSet::from_slice(builtins);
        let secrets = if builtins.contains(BuiltinEntity::Secret) {
            Some(SecretFinder::new()?)
        } else {
            None
        };
        let max = usize::from(u16::MAX) + 1;
        if custom.len() > max {
            return Err(ScannerError::TooManyCustomEntities {
                count: custom.len(),
                max,
            });
        }
        let custom = custom
            .iter()
            .zip(0..=u16::MAX)
            .map(|(entity, index)| CustomRecognizer::new(index, entity))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scanner {
            builtins,
            secrets,
            custom,
        })
    }

    /// Returns the name of `entity`: the builtin name, the custom entity's name, or
    /// `CUSTOM` for a custom index this scanner does not have.
    pub fn entity_name(&self, entity: Entity) -> &str {
        match entity {
            Entity::Builtin(builtin) => builtin.name(),
            Entity::Custom(index) => self
                .custom
                .get(usize::from(index))
                .map_or("CUSTOM", |custom| custom.name.as_str()),
        }
    }

    /// Appends the matches in `text`, sorted by start, never overlapping.
    ///
    /// Where matches overlap, the longer one wins. On equal length the entity with the
    /// higher priority wins: SECRET, CREDIT_CARD, IBAN, US_SSN, EMAIL, IP_ADDRESS, PHONE,
    /// then custom entities in list order. Matches already in `out` are left alone.
    pub fn scan(&self, text: &str, out: &mut Vec<PiiMatch>) {
        let bytes = text.as_bytes();
        let mut candidates = Vec::new();
        if self.builtins.contains(BuiltinEntity::Email) {
            email::find(bytes, &mut candidates);
        }
        let digit_based = [
            BuiltinEntity::Phone,
            BuiltinEntity::CreditCard,
            BuiltinEntity::Iban,
            BuiltinEntity::UsSsn,
            BuiltinEntity::IpAddress,
        ];
        if digit_based.into_iter().any(|e| self.builtins.contains(e)) {
            numbers::find(bytes, self.builtins, &mut candidates);
        }
        if self.builtins.contains(BuiltinEntity::IpAddress) {
            ip::find_ipv6(bytes, &mut candidates);
        }
        if let Some(secrets) = &self.secrets {
            secrets.find(bytes, &mut candidates);
        }
        for custom in &self.custom {
            custom.find(text, &mut candidates);
        }
        resolve_overlaps(&mut candidates, out);
    }

    /// Returns the length in bytes of the longest suffix of `text` that could still grow
    /// into a match, or into the context that confirms one, if more text were appended.
    ///
    /// A streaming guard holds this suffix back until more text arrives. The estimate is
    /// conservative and capped (see the `tail` module), and the suffix starts on a char
    /// boundary.
    pub fn pending_tail_len(&self, text: &str) -> usize {
        tail::pending_tail_len(self, text)
    }
}

/// Appends the non-overlapping subset of `candidates` to `out`, sorted by start.
///
/// Candidates are grouped into clusters of transitively overlapping spans. Within a
/// cluster, the longest candidate is kept first, then the next longest that overlaps no
/// kept one, and so on, with ties going to the higher priority.
fn resolve_overlaps(candidates: &mut [Candidate], out: &mut Vec<PiiMatch>) {
    candidates.sort_unstable_by_key(|c| (c.start, c.end, c.entity.priority()));
    let mut accepted: Vec<Candidate> = Vec::new();
    let mut cluster_start = 0;
    while cluster_start < candidates.len() {
        let mut cluster_end = cluster_start + 1;
        let mut reach = candidates[cluster_start].end;
        while cluster_end < candidates.len() && candidates[cluster_end].start < reach {
            reach = reach.max(candidates[cluster_end].end);
            cluster_end += 1;
        }
        let cluster = &mut candidates[cluster_start..cluster_end];
        cluster_start = cluster_end;

        if let [only] = cluster {
            out.push(to_match(only));
            continue;
        }
        cluster.sort_unstable_by_key(|c| (Reverse(c.end - c.start), c.entity.priority(), c.start));
        // `accepted` stays sorted by start and free of overlaps, so only the neighbours
        // at the insertion point can overlap a candidate.
        accepted.clear();
        for candidate in cluster.iter() {
            let index = accepted.partition_point(|kept| kept.start < candidate.start);
            let overlaps_previous = index
                .checked_sub(1)
                .is_some_and(|previous| accepted[previous].end > candidate.start);
            let overlaps_next = accepted
                .get(index)
                .is_some_and(|next| next.start < candidate.end);
            if !overlaps_previous && !overlaps_next {
                accepted.insert(index, *candidate);
            }
        }
        out.extend(accepted.iter().map(to_match));
    }
}

fn to_match(candidate: &Candidate) -> PiiMatch {
    PiiMatch {
        entity: candidate.entity,
        start: candidate.start,
        end: candidate.end,
    }
}

#[cfg(test)]
mod tests;
