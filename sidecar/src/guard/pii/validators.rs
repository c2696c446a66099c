//! Checksums and numbering-plan rules that validate candidates found in the text.
//!
//! Digit slices hold digit values (0 to 9), not ASCII bytes.

/// Maximum length of an IBAN in characters (Russia, 33, is the longest in the registry).
pub(super) const MAX_IBAN_LEN: usize = 34;

/// Returns whether `digits` pass the Luhn (mod 10) checksum.
pub(super) fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Returns whether the issuer prefix of a card number matches its length.
///
/// Issuer ranges: Visa 4 (13, 16 or 19 digits), Mastercard 51-55 and 2221-2720 (16),
/// American Express 34 and 37 (15), Discover 6011, 644-649 and 65 (16-19), Diners Club
/// 36, 38 and 300-305 (14-19), JCB 3528-3589 (16-19), UnionPay 62 (16-19).
pub(super) fn card_issuer_valid(digits: &[u8]) -> bool {
    let len = digits.len();
    if len < 13 {
        return false;
    }
    let prefix = |n: usize| {
        digits[..n]
            .iter()
            .fold(0u32, |value, &d| value * 10 + u32::from(d))
    };
    let visa = digits[0] == 4 && matches!(len, 13 | 16 | 19);
    let mastercard =
        len == 16 && ((51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4)));
    let amex = len == 15 && matches!(prefix(2), 34 | 37);
    let long = (16..=19).contains(&len);
    let discover =
        long && (prefix(4) == 6011 || (644..=649).contains(&prefix(3)) || prefix(2) == 65);
    let diners = (14..=19).contains(&len)
        && (matches!(prefix(2), 36 | 38) || (300..=305).contains(&prefix(3)));
    let jcb = long && (3528..=3589).contains(&prefix(4));
    let unionpay = long && prefix(2) == 62;
    visa || mastercard || amex || discover || diners || jcb || unionpay
}

/// Returns the IBAN length of the country with ISO 3166 code `country`, or `None` for a
/// country that does not use IBANs.
///
/// NOTE: the lengths follow the SWIFT IBAN registry but were typed in by hand, so a
/// country added to the registry later is missing.
pub(super) fn iban_length(country: &[u8]) -> Option<usize> {
    let length = match country {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BI" => 27,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DJ" => 27,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FK" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HN" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"LY" => 25,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MN" => 20,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NI" => 28,
        b"NL" => 18,
        b"NO" => 15,
        b"OM" => 23,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"RU" => 33,
        b"SA" => 24,
        b"SC" => 31,
        b"SD" => 18,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"SO" => 23,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        b"YE" => 30,
        _ => return None,
    };
    Some(length)
}

/// Returns whether a compact IBAN (upper-case ASCII letters and digits) passes the
/// ISO 7064 mod-97 check: with the first four characters moved to the end and letters
/// replaced by 10 to 35, the number modulo 97 is 1.
pub(super) fn iban_checksum_valid(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut remainder: u32 = 0;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        remainder = match c {
            b'0'..=b'9' => (remainder * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (remainder * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    remainder == 1
}

/// Returns whether the parts of a US Social Security number can be issued.
///
/// Rejects area 000, 666 and 900-999, group 00, serial 0000, and the two numbers that
/// were printed in advertising and then used by many people (078-05-1120, 219-09-9999).
pub(super) fn ssn_valid(area: u16, group: u16, serial: u16) -> bool {
    let unissued = area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0;
    let advertising = matches!((area, group, serial), (78, 5, 1120) | (219, 9, 9999));
    !unissued && !advertising
}

/// Returns whether a 10-digit North American number has an area code and an exchange
/// code that start with 2-9, as the North American Numbering Plan requires.
pub(super) fn nanp_valid(national: &[u8]) -> bool {
    national.len() == 10 && national[0] >= 2 && national[3] >= 2
}

/// Two-digit ITU-T E.164 country calling codes.
const TWO_DIGIT_CALLING_CODES: [u8; 44] = [
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
    57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
];

/// Returns the length of the assigned ITU-T E.164 country calling code that `digits`
/// starts with, or `None` when no assigned code matches.
///
/// Calling codes are prefix-free, so at most one length can match. The list includes the
/// shared codes for global services.
///
/// NOTE: the list was typed in by hand from the ITU-T E.164 assignments, not generated
/// from an ITU-T file, so a newly assigned code is missing.
pub(super) fn calling_code_len(digits: &[u8]) -> Option<usize> {
    let first = *digits.first()?;
    if first == 1 || first == 7 {
        return Some(1);
    }
    let two = first * 10 + *digits.get(1)?;
    if TWO_DIGIT_CALLING_CODES.contains(&two) {
        return Some(2);
    }
    let three = u16::from(two) * 10 + u16::from(*digits.get(2)?);
    let assigned = matches!(three,
        211 | 212 | 213 | 216 | 218 | 220..=258 | 260..=269 | 290 | 291 | 297..=299
        | 350..=359 | 370..=383 | 385..=387 | 389 | 420 | 421 | 423 | 500..=509 | 590..=599
        | 670 | 672..=683 | 685..=692 | 800 | 808 | 850 | 852 | 853 | 855 | 856 | 870 | 878
        | 880..=883 | 886 | 888 | 960..=968 | 970..=977 | 979 | 992..=998);
    assigned.then_some(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(text: &str) -> Vec<u8> {
        text.bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect()
    }

    #[test]
    fn luhn_cases() {
        let cases = [
            ("4111111111111111", true),
            ("79927398713", true),
            ("79927398710", false),
            ("1234567812345678", false),
            ("378282246310005", true),
            ("0", true),
        ];
        for (number, expected) in cases {
            assert_eq!(luhn_valid(&digits(number)), expected, "{number}");
        }
    }

    #[test]
    fn card_issuer_cases() {
        let cases = [
            ("4222222222222", true),       // Visa 13
            ("4111111111111111", true),    // Visa 16
            ("4111111111111111110", true), // Visa 19
            ("41111111111111111", false),  // Visa 17
            ("5555555555554444", true),    // Mastercard 55
            ("2223003122003222", true),    // Mastercard 2223
            ("2721000000000000", false),   // above the 2-series range
            ("5655555555554444", false),   // 56 is not Mastercard
            ("378282246310005", true),     // Amex 15
            ("3782822463100050", false),   // Amex 16
            ("6011111111111117", true),    // Discover
            ("6445000000000000", true),    // Discover 644
            ("6500000000000000000", true), // Discover 19
            ("30569309025904", true),      // Diners 14
            ("36227206271667", true),      // Diners 36
            ("3530111333300000", true),    // JCB
            ("3590000000000000", false),   // above the JCB range
            ("6200000000000005", true),    // UnionPay
            ("1548138160707", false),      // no issuer starts with 1
            ("9999999999999999", false),   // no issuer starts with 9
            ("412345678901", false),       // too short
        ];
        for (number, expected) in cases {
            assert_eq!(card_issuer_valid(&digits(number)), expected, "{number}");
        }
    }

    #[test]
    fn iban_lengths_of_required_countries() {
        let cases: [(&[u8; 2], usize); 18] = [
            (b"AL", 28),
            (b"DE", 22),
            (b"FR", 27),
            (b"GB", 22),
            (b"NL", 18),
            (b"ES", 24),
            (b"IT", 27),
            (b"CH", 21),
            (b"BE", 16),
            (b"AT", 20),
            (b"PL", 28),
            (b"SE", 24),
            (b"NO", 15),
            (b"DK", 18),
            (b"FI", 18),
            (b"IE", 22),
            (b"PT", 25),
            (b"LU", 20),
        ];
        for (country, length) in cases {
            assert_eq!(iban_length(country), Some(length), "{country:?}");
        }
        assert_eq!(iban_length(b"US"), None);
        assert_eq!(iban_length(b"de"), None);
    }

    #[test]
    fn iban_checksum_cases() {
        let cases = [
            ("AL47212110090000000235698741", true),
            ("DE89370400440532013000", true),
            ("GB82WEST12345698765432", true),
            ("GB82WEST12345698765433", false),
            ("NO9386011117947", true),
            ("BE68539007547034", true),
            ("DE89370400440532013001", false),
            ("de89370400440532013000", false),
            ("DE8", false),
        ];
        for (iban, expected) in cases {
            assert_eq!(iban_checksum_valid(iban.as_bytes()), expected, "{iban}");
        }
    }

    #[test]
    fn ssn_rules() {
        let cases = [
            ((123, 45, 6789), true),
            ((0, 45, 6789), false),
            ((666, 45, 6789), false),
            ((900, 45, 6789), false),
            ((999, 45, 6789), false),
            ((123, 0, 6789), false),
            ((123, 45, 0), false),
            ((78, 5, 1120), false),
            ((219, 9, 9999), false),
            ((899, 99, 9999), true),
        ];
        for ((area, group, serial), expected) in cases {
            assert_eq!(
                ssn_valid(area, group, serial),
                expected,
                "{area:03}-{group:02}-{serial:04}"
            );
        }
    }

    #[test]
    fn nanp_rules() {
        assert!(nanp_valid(&digits("4155552671")));
        assert!(!nanp_valid(&digits("1155552671")), "area starts with 1");
        assert!(!nanp_valid(&digits("0155552671")), "area starts with 0");
        assert!(!nanp_valid(&digits("4151552671")), "exchange starts with 1");
        assert!(!nanp_valid(&digits("415055267")), "nine digits");
    }

    #[test]
    fn calling_code_cases() {
        let cases = [
            ("14155552671", Some(1)),
            ("74951234567", Some(1)),
            ("442079460958", Some(2)),
            ("4930123456", Some(2)),
            ("35312345678", Some(3)),
            ("97150123456", Some(3)),
            ("2141234567", None),
            ("42212345", None),
            ("0", None),
            ("", None),
        ];
        for (number, expected) in cases {
            assert_eq!(calling_code_len(&digits(number)), expected, "{number}");
        }
    }
}
