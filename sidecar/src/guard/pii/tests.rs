//! Scanner-level tests: each recognizer through `Scanner::scan`, overlap resolution and
//! Unicode handling.

use super::*;

fn all_builtins() -> Scanner {
    Scanner::new(&BuiltinEntity::ALL, &[]).expect("builtin scanner builds")
}

/// Returns each match of `text` as (entity name, matched text).
fn found<'a>(scanner: &'a Scanner, text: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    scanner.scan(text, &mut out);
    out.iter()
        .map(|m| (scanner.entity_name(m.entity), &text[m.start..m.end]))
        .collect()
}

fn values_of<'a>(matches: &[(&str, &'a str)], entity: &str) -> Vec<&'a str> {
    matches
        .iter()
        .filter(|(name, _)| *name == entity)
        .map(|(_, value)| *value)
        .collect()
}

#[test]
fn builtin_names_round_trip() {
    let names = [
        "EMAIL",
        "PHONE",
        "CREDIT_CARD",
        "IBAN",
        "US_SSN",
        "IP_ADDRESS",
        "SECRET",
    ];
    for (entity, name) in BuiltinEntity::ALL.into_iter().zip(names) {
        assert_eq!(entity.name(), name);
        assert_eq!(BuiltinEntity::from_name(name), Some(entity));
    }
    assert_eq!(BuiltinEntity::from_name("email"), None);
    assert_eq!(BuiltinEntity::from_name("CUSTOM"), None);
}

#[test]
fn scanner_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scanner>();
    assert_send_sync::<HashKey>();
}

#[test]
fn email_excludes_trailing_dot() {
    let scanner = all_builtins();
    assert_eq!(
        found(&scanner, "mail me at a.b@example.com."),
        [("EMAIL", "a.b@example.com")]
    );
}

#[test]
fn email_accepted_forms() {
    let scanner = all_builtins();
    let cases = [
        (
            "Reach jane.doe+news@mail.example.co.uk today",
            "jane.doe+news@mail.example.co.uk",
        ),
        (
            "(first_last-1@sub-domain.example.org)",
            "first_last-1@sub-domain.example.org",
        ),
        (
            "415-555-2671@txt.example.com",
            "415-555-2671@txt.example.com",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(found(&scanner, text), [("EMAIL", expected)], "{text:?}");
    }
}

#[test]
fn phone_accepted_formats() {
    let scanner = all_builtins();
    let cases = [
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "+1 415 555 2671",
        "1-415-555-2671",
        "+44 20 7946 0958",
        "+49 30 12345678",
        "+33 1 23 45 67 89",
        "+14155552671",
    ];
    for phone in cases {
        let text = format!("Call me at {phone}, thanks.");
        assert_eq!(found(&scanner, &text), [("PHONE", phone)], "{text:?}");
    }
}

#[test]
fn phone_rejected_candidates() {
    let scanner = all_builtins();
    let cases = [
        "request 110bcd25-a55d-453a-8046-1297901ea002 failed",
        "ts=1548138160707",
        "build abc4155552671def and x415-555-2671",
        "card 4111 1111 1111 1111",
        "card 4111-1111-1111-1111",
        "iban DE89 3704 0044 0532 0130 00",
        "on 2024-01-15 at 12:30",
        "version 10.15.7 and 1.2.3.4.5",
        "host 192.168.100.200",
        "area (115) 555-2671 and 415-155-2671",
        "4155552671",
    ];
    for text in cases {
        let matches = found(&scanner, text);
        assert_eq!(values_of(&matches, "PHONE"), Vec::<&str>::new(), "{text:?}");
    }
}

#[test]
fn uuid_yields_no_match() {
    let scanner = all_builtins();
    let text = "110bcd25-a55d-453a-8046-1297901ea002";
    assert_eq!(found(&scanner, text), []);
}

#[test]
fn credit_card_cases() {
    let scanner = all_builtins();
    let cases: &[(&str, &[&str])] = &[
        ("1234-5678-1234-5678", &[]),
        ("1548138160707", &[]),
        ("ref 99 4111-1111-1111-1111 2", &["4111-1111-1111-1111"]),
        ("ref 99 4111 1111 1111 1111 2", &["4111 1111 1111 1111"]),
        ("amex 3782 822463 10005", &["3782 822463 10005"]),
        ("mc 5555555555554444.", &["5555555555554444"]),
        ("visa 4111111111111112", &[]),
    ];
    for &(text, expected) in cases {
        let matches = found(&scanner, text);
        assert_eq!(values_of(&matches, "CREDIT_CARD"), expected, "{text:?}");
    }
}

#[test]
fn card_inside_reference_is_only_match() {
    let scanner = all_builtins();
    let text = "ref 99 4111-1111-1111-1111 2";
    let mut out = Vec::new();
    scanner.scan(text, &mut out);
    let start = text.find("4111").expect("card is in the text");
    assert_eq!(
        out,
        [PiiMatch {
            entity: Entity::Builtin(BuiltinEntity::CreditCard),
            start,
            end: start + "4111-1111-1111-1111".len(),
        }]
    );
}

#[test]
fn iban_stops_at_country_length() {
    let scanner = all_builtins();
    let text = "AL47212110090000000235698741 ALL CAPS";
    let mut out = Vec::new();
    scanner.scan(text, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].entity, Entity::Builtin(BuiltinEntity::Iban));
    assert_eq!((out[0].start, out[0].end), (0, 28));
}

#[test]
fn iban_cases() {
    let scanner = all_builtins();
    let cases: &[(&str, &[&str])] = &[
        (
            "pay to DE89 3704 0044 0532 0130 00.",
            &["DE89 3704 0044 0532 0130 00"],
        ),
        ("GB82WEST12345698765432", &["GB82WEST12345698765432"]),
        (
            "AL47 2121 1009 0000 0002 3569 8741 ALL",
            &["AL47 2121 1009 0000 0002 3569 8741"],
        ),
        ("DE89370400440532013001", &[]),
        ("XDE89370400440532013000", &[]),
    ];
    for &(text, expected) in cases {
        let matches = found(&scanner, text);
        assert_eq!(values_of(&matches, "IBAN"), expected, "{text:?}");
    }
}

#[test]
fn us_ssn_cases() {
    let scanner = all_builtins();
    let cases: &[(&str, &[&str])] = &[
        ("SSN 123-45-6789", &["123-45-6789"]),
        ("123 45 6789", &["123 45 6789"]),
        ("ssn: 123456789", &["123456789"]),
        ("social security number 123456789", &["123456789"]),
        ("invoice 123456789", &[]),
        ("666-12-3456 and 900-12-3456 and 000-12-3456", &[]),
        ("123-00-4567 and 123-45-0000", &[]),
        ("078-05-1120 and 219-09-9999", &[]),
    ];
    for &(text, expected) in cases {
        let matches = found(&scanner, text);
        assert_eq!(values_of(&matches, "US_SSN"), expected, "{text:?}");
    }
}

#[test]
fn ip_address_cases() {
    let scanner = all_builtins();
    let cases: &[(&str, &[&str])] = &[
        ("server 10.0.0.1:8080 is up", &["10.0.0.1"]),
        ("range 255.255.255.255.", &["255.255.255.255"]),
        ("bad 256.1.1.1 and 01.2.3.4", &[]),
        ("version 1.2.3.4.5", &[]),
        (
            "v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            &["2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
        ),
        (
            "compressed fe80::1ff:fe23:4567:890a ok",
            &["fe80::1ff:fe23:4567:890a"],
        ),
        ("mapped ::ffff:192.0.2.128", &["::ffff:192.0.2.128"]),
        ("meet at 12:30 or 12:30:45", &[]),
        ("the :: operator", &[]),
    ];
    for &(text, expected) in cases {
        let matches = found(&scanner, text);
        assert_eq!(values_of(&matches, "IP_ADDRESS"), expected, "{text:?}");
    }
}

#[test]
fn secret_cases() {
    let scanner = all_builtins();
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----";
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let github = format!("ghp_{}", "x1Y".repeat(12));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "aws AKIAIOSFODNN7EXAMPLE".into(),
            vec!["AKIAIOSFODNN7EXAMPLE"],
        ),
        (format!("here:\n{pem}\nbye"), vec![pem]),
        (format!("Authorization: Bearer {jwt}"), vec![jwt]),
        (
            "Authorization: Bearer 0123456789abcdefXYZ".into(),
            vec!["0123456789abcdefXYZ"],
        ),
        (format!("GITHUB_TOKEN={github}"), vec![github.as_str()]),
        (
            "key sk-Ab3dEf6hIj9kLm2nOp5qRs8t".into(),
            vec!["sk-Ab3dEf6hIj9kLm2nOp5qRs8t"],
        ),
        ("the bearer of bad news".into(), vec![]),
    ];
    for (text, expected) in &cases {
        let matches = found(&scanner, text);
        assert_eq!(&values_of(&matches, "SECRET"), expected, "{text:?}");
    }
}

#[test]
fn pem_block_is_one_match() {
    let scanner = all_builtins();
    // The body contains an email-like line and a number; the block still wins whole.
    let pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAKIAIOSFODNN7EXAMPLE4111111111111111\n-----END EC PRIVATE KEY-----";
    let text = format!("see {pem} ok");
    assert_eq!(found(&scanner, &text), [("SECRET", pem)]);
}

#[test]
fn custom_entity_invalid_pattern() {
    let custom = CustomEntity {
        name: "EMPLOYEE_ID".to_owned(),
        pattern: "E-[0-9".to_owned(),
        context_words: Vec::new(),
    };
    let error = Scanner::new(&[], &[custom]).expect_err("pattern is invalid");
    let message = error.to_string();
    assert!(message.contains("\"EMPLOYEE_ID\""), "{message}");
    assert!(message.contains("unclosed character class"), "{message}");
}

#[test]
fn custom_entity_context_words() {
    let custom = CustomEntity {
        name: "EMPLOYEE_ID".to_owned(),
        pattern: r"\b\d{6}\b".to_owned(),
        context_words: vec!["employee".to_owned(), "staff id".to_owned()],
    };
    let scanner = Scanner::new(&[], &[custom]).expect("scanner builds");
    let cases: &[(&str, &[&str])] = &[
        ("Employee 123456 joined", &["123456"]),
        ("123456 is my STAFF ID", &["123456"]),
        ("order 123456", &[]),
        ("employees 123456", &[]),
    ];
    for &(text, expected) in cases {
        let matches = found(&scanner, text);
        assert_eq!(values_of(&matches, "EMPLOYEE_ID"), expected, "{text:?}");
    }
}

#[test]
fn longer_match_wins_overlap() {
    let custom = CustomEntity {
        name: "ACCOUNT".to_owned(),
        pattern: r"acct 415-555-2671".to_owned(),
        context_words: Vec::new(),
    };
    let scanner = Scanner::new(&BuiltinEntity::ALL, &[custom]).expect("scanner builds");
    assert_eq!(
        found(&scanner, "my acct 415-555-2671 ok"),
        [("ACCOUNT", "acct 415-555-2671")]
    );
}

#[test]
fn builtin_beats_custom_on_equal_span() {
    let customs = [
        CustomEntity {
            name: "FIRST".to_owned(),
            pattern: r"\d{3}-\d{2}-\d{4}".to_owned(),
            context_words: Vec::new(),
        },
        CustomEntity {
            name: "SECOND".to_owned(),
            pattern: r"\d{3}-\d{2}-\d{4}".to_owned(),
            context_words: Vec::new(),
        },
    ];
    let scanner = Scanner::new(&BuiltinEntity::ALL, &customs).expect("scanner builds");
    assert_eq!(
        found(&scanner, "ssn 123-45-6789"),
        [("US_SSN", "123-45-6789")]
    );
    let custom_only = Scanner::new(&[], &customs).expect("scanner builds");
    assert_eq!(
        found(&custom_only, "ssn 123-45-6789"),
        [("FIRST", "123-45-6789")]
    );
}

#[test]
fn equal_length_priority_order() {
    let order = [
        Entity::Builtin(BuiltinEntity::Secret),
        Entity::Builtin(BuiltinEntity::CreditCard),
        Entity::Builtin(BuiltinEntity::Iban),
        Entity::Builtin(BuiltinEntity::UsSsn),
        Entity::Builtin(BuiltinEntity::Email),
        Entity::Builtin(BuiltinEntity::IpAddress),
        Entity::Builtin(BuiltinEntity::Phone),
        Entity::Custom(0),
        Entity::Custom(1),
    ];
    for (i, &winner) in order.iter().enumerate() {
        for &loser in &order[i + 1..] {
            // Same span, and an overlapping shifted span, in both input orders.
            for shift in [0, 2] {
                for swap in [false, true] {
                    let a = Candidate {
                        entity: winner,
                        start: 10,
                        end: 20,
                    };
                    let b = Candidate {
                        entity: loser,
                        start: 10 + shift,
                        end: 20 + shift,
                    };
                    let mut candidates = if swap { vec![b, a] } else { vec![a, b] };
                    let mut out = Vec::new();
                    resolve_overlaps(&mut candidates, &mut out);
                    assert_eq!(out.len(), 1, "{winner:?} vs {loser:?}");
                    assert_eq!(
                        out[0].entity, winner,
                        "{winner:?} vs {loser:?}, shift {shift}"
                    );
                    assert_eq!(out[0].start, 10, "{winner:?} vs {loser:?}, shift {shift}");
                }
            }
        }
    }
}

#[test]
fn resolve_overlaps_keeps_sorted_disjoint_matches() {
    let phone = Entity::Builtin(BuiltinEntity::Phone);
    let email = Entity::Builtin(BuiltinEntity::Email);
    let mut candidates = vec![
        Candidate {
            entity: phone,
            start: 30,
            end: 35,
        },
        Candidate {
            entity: email,
            start: 0,
            end: 10,
        },
        Candidate {
            entity: phone,
            start: 5,
            end: 12,
        },
        Candidate {
            entity: phone,
            start: 11,
            end: 14,
        },
        Candidate {
            entity: email,
            start: 40,
            end: 41,
        },
    ];
    let mut out = vec![PiiMatch {
        entity: email,
        start: 100,
        end: 101,
    }];
    resolve_overlaps(&mut candidates, &mut out);
    let spans: Vec<(usize, usize)> = out.iter().map(|m| (m.start, m.end)).collect();
    assert_eq!(spans, [(100, 101), (0, 10), (11, 14), (30, 35), (40, 41)]);
}

#[test]
fn subset_of_builtins() {
    let scanner = Scanner::new(&[BuiltinEntity::Email], &[]).expect("scanner builds");
    let text = "a@example.com 415-555-2671 AKIAIOSFODNN7EXAMPLE 10.0.0.1";
    assert_eq!(found(&scanner, text), [("EMAIL", "a@example.com")]);
    let empty = Scanner::new(&[], &[]).expect("scanner builds");
    assert_eq!(found(&empty, text), []);
}

#[test]
fn entity_name_lookup() {
    let custom = CustomEntity {
        name: "EMPLOYEE_ID".to_owned(),
        pattern: "E-[0-9]+".to_owned(),
        context_words: Vec::new(),
    };
    let scanner = Scanner::new(&[BuiltinEntity::Phone], &[custom]).expect("scanner builds");
    assert_eq!(
        scanner.entity_name(Entity::Builtin(BuiltinEntity::Iban)),
        "IBAN"
    );
    assert_eq!(scanner.entity_name(Entity::Custom(0)), "EMPLOYEE_ID");
    assert_eq!(scanner.entity_name(Entity::Custom(7)), "CUSTOM");
}

#[test]
fn unicode_text_offsets() {
    let scanner = all_builtins();
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("电话415-555-2671谢谢", &[("PHONE", "415-555-2671")]),
        ("😀 a.b@example.com 😀", &[("EMAIL", "a.b@example.com")]),
        ("全角４１５-５５５-２６７１と１２３-４５-６７８９", &[]),
        (
            "<|endoftext|>mail a@example.com<|endoftext|>",
            &[("EMAIL", "a@example.com")],
        ),
        ("日本語のテキストです。", &[]),
    ];
    for &(text, expected) in cases {
        assert_eq!(found(&scanner, text), expected, "{text:?}");
    }
}

/// Generates deterministic pseudo-random texts from pieces that stress boundaries:
/// digits, separators, multi-byte characters and entity fragments.
fn generated_texts(count: usize) -> Vec<String> {
    let pieces = [
        "4",
        "1",
        "0",
        "9",
        "-",
        " ",
        ".",
        "@",
        ":",
        "+",
        "(",
        ")",
        "é",
        "日",
        "😀",
        "１",
        "A",
        "x",
        "Z",
        "\n",
        "::",
        "AKIA",
        "eyJ",
        "Bearer ",
        "-----BEGIN RSA PRIVATE KEY-----",
        "ssn ",
        "4111 1111 1111 1111",
        "415-555-2671",
        "DE89",
        "a@b.co",
        "_",
        "ghp_",
        "sk-",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64: a fixed seed keeps failures reproducible.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = (next() % 40) as usize;
            (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn generated_texts_keep_invariants() {
    let custom = CustomEntity {
        name: "WORD".to_owned(),
        pattern: r"[xZ]+\d*".to_owned(),
        context_words: vec!["ssn".to_owned()],
    };
    let scanner = Scanner::new(&BuiltinEntity::ALL, &[custom]).expect("scanner builds");
    for text in generated_texts(3000) {
        let mut out = Vec::new();
        scanner.scan(&text, &mut out);
        for m in &out {
            assert!(m.start < m.end, "{text:?}: {m:?}");
            assert!(text.is_char_boundary(m.start), "{text:?}: {m:?}");
            assert!(text.is_char_boundary(m.end), "{text:?}: {m:?}");
        }
        for pair in out.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{text:?}: {pair:?}");
        }
        let tail = scanner.pending_tail_len(&text);
        assert!(tail <= text.len(), "{text:?}");
        assert!(text.is_char_boundary(text.len() - tail), "{text:?}");
    }
}
