//! Throughput of `Scanner::scan` with every builtin entity enabled.
//!
//! Inputs are about 64 KiB each and generated deterministically: English chat text with
//! PII values sprinkled in, the same chat text without PII, and digit-heavy text (log
//! tables with timestamps, UUIDs, dates, versions and amounts).
//!
//! Run: `cargo bench -p agent-sidecar --bench guard_scan -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use agent_sidecar::guard::pii::{BuiltinEntity, PiiMatch, Scanner};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TARGET_LEN: usize = 64 * 1024;

/// Chat sentences with the digits, colons, dots and capitals of ordinary prose but no PII.
const SENTENCES: [&str; 24] = [
    "Thanks for the quick reply, I'll take a look at the logs this afternoon.",
    "Can you summarize the main points of the meeting for the rest of the team?",
    "The deployment went out at 3pm and the error rate has looked normal since then.",
    "Sure! Here is a short overview of the options we discussed yesterday:",
    "1. Keep the current setup and add two more replicas before the launch.",
    "2. Move the batch jobs to the night window, between 01:00 and 04:00 UTC.",
    "Note: version 2.4 of the client changed the retry policy, so check the defaults.",
    "I think the simplest fix is to raise the timeout to 30 seconds and retry once.",
    "Could you explain why the cache hit rate dropped to 61% last week?",
    "The report covers Q3 and compares it with the same quarter of 2023.",
    "In Rust you would write `let total: u64 = items.iter().map(|i| i.size).sum();` here.",
    "That makes sense. What would you recommend for the staging environment?",
    "We usually review pull requests within one business day, sometimes faster.",
    "The new onboarding guide is in the wiki under Engineering > Getting Started.",
    "Please double-check the numbers in the second table before we send it out.",
    "According to the dashboard, about 1,200 users were active during the incident.",
    "Let me know if you want me to draft the announcement for the status page.",
    "The model answered correctly in 87 of 100 cases, which is better than before.",
    "OK, I'll schedule the follow-up for Tuesday at 10:30 and invite the whole team.",
    "It depends on the region: EU customers are served from Frankfurt and Dublin.",
    "Here's a rough estimate: two days for the backend and one for the UI changes.",
    "The CSV export has 14 columns; the last three are new in this release.",
    "Good question! The short answer is yes, but there are a few caveats.",
    "I've attached the summary below so you can forward it to the customer.",
];

/// PII values of every builtin entity, in the forms users paste into chats.
const PII_VALUES: [&str; 10] = [
    "jane.doe@example.com",
    "(415) 555-2671",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "123-45-6789",
    "10.20.30.40",
    "2001:db8::8a2e:370:7334",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3",
];

/// xorshift64 with a fixed seed, so every run scans the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Returns about 64 KiB of chat turns. With `with_pii`, about one sentence in 25 is
/// followed by a sentence that contains a PII value.
fn chat_text(with_pii: bool) -> String {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut text = String::with_capacity(TARGET_LEN + 256);
    let mut sentence_count = 0;
    while text.len() < TARGET_LEN {
        if sentence_count % 6 == 0 {
            let speaker = if sentence_count % 12 == 0 {
                "\nUser: "
            } else {
                "\nAssistant: "
            };
            text.push_str(speaker);
        }
        text.push_str(SENTENCES[rng.below(SENTENCES.len())]);
        text.push(' ');
        if with_pii && rng.below(25) == 0 {
            text.push_str("You can reach me with ");
            text.push_str(PII_VALUES[rng.below(PII_VALUES.len())]);
            text.push_str(" if anything comes up. ");
        }
        sentence_count += 1;
    }
    text
}

/// Returns about 64 KiB of log-table rows full of numbers that must not match.
fn digit_heavy_text() -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut text = String::with_capacity(TARGET_LEN + 256);
    text.push_str("| time | epoch ms | request id | latency ms | bytes | build |\n");
    while text.len() < TARGET_LEN {
        let row = format!(
            "| 2024-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z | {} | {:08x}-{:04x}-4{:03x}-a{:03x}-{:012x} | {}.{} | {},{:03} | v{}.{}.{} |\n",
            rng.below(12) + 1,
            rng.below(28) + 1,
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1000),
            1_548_138_160_707 + rng.below(1_000_000_000),
            rng.next() as u32,
            rng.next() as u16,
            rng.below(0x1000),
            rng.below(0x1000),
            rng.next() & 0xFFFF_FFFF_FFFF,
            rng.below(900),
            rng.below(10),
            rng.below(999) + 1,
            rng.below(1000),
            rng.below(5),
            rng.below(30),
            rng.below(100),
        );
        text.push_str(&row);
    }
    text
}

fn count_matches(scanner: &Scanner, text: &str) -> usize {
    let mut out = Vec::new();
    scanner.scan(text, &mut out);
    out.len()
}

fn bench_scan(c: &mut Criterion) {
    let scanner = Scanner::new(&BuiltinEntity::ALL, &[]).expect("builtin scanner builds");
    let inputs = [
        ("chat_with_pii", chat_text(true)),
        ("chat_without_pii", chat_text(false)),
        ("digit_heavy", digit_heavy_text()),
    ];
    // The inputs are only meaningful if the PII text has matches and the others have none.
    assert!(
        count_matches(&scanner, &inputs[0].1) > 10,
        "chat_with_pii has too few matches"
    );
    assert_eq!(
        count_matches(&scanner, &inputs[1].1),
        0,
        "chat_without_pii has matches"
    );
    assert_eq!(
        count_matches(&scanner, &inputs[2].1),
        0,
        "digit_heavy has matches"
    );

    let mut group = c.benchmark_group("pii_scan");
    for (name, text) in &inputs {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(*name, |b| {
            let mut out: Vec<PiiMatch> = Vec::new();
            b.iter(|| {
                out.clear();
                scanner.scan(black_box(text), &mut out);
                out.len()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_scan);
criterion_main!(benches);
