//! PII masking: e-mail addresses, phone numbers, card numbers (Luhn-checked) and configured
//! patterns are replaced by placeholders such as `[EMAIL_1]` before a provider sees the text,
//! and put back in what the model answers.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// One kind of value to mask.
#[derive(Debug)]
pub(crate) enum PiiKind {
    Email,
    Phone,
    Card,
    /// A configured pattern; `label` is its name in upper case (the placeholder's prefix).
    Custom {
        label: String,
        regex: Regex,
    },
}

impl PiiKind {
    fn label(&self) -> &str {
        match self {
            Self::Email => "EMAIL",
            Self::Phone => "PHONE",
            Self::Card => "CARD",
            Self::Custom { label, .. } => label,
        }
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
        .expect("a valid e-mail pattern")
});
/// 13 to 19 digits, optionally grouped by spaces or dashes, not inside a longer number.
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ \-]?\d){12,18}\b").expect("a valid card pattern"));
/// A run of digits with the separators phone numbers are written with; which runs are
/// phone numbers is decided by [`is_phone`].
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\+?\(?\d[\d .()\-]{5,22}\d").expect("a valid phone pattern"));
static DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4})$")
        .expect("a valid date pattern")
});
static IPV4: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{1,3}(?:\.\d{1,3}){3}$").expect("a valid IPv4 pattern"));
/// A placeholder as [`PiiSession::mask`] writes it.
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[([A-Z][A-Z0-9_]*_[0-9]+)\]").expect("a valid placeholder pattern")
});

/// The Luhn checksum of a card number's digits: true when valid.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0;
    let mut count = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(d) = c.to_digit(10) else {
            return false;
        };
        let d = if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 { doubled - 9 } else { doubled }
        } else {
            d
        };
        sum += d;
        count += 1;
    }
    count > 0 && sum % 10 == 0
}

fn is_card(candidate: &str) -> bool {
    let digits: String = candidate.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && luhn_valid(&digits)
}

/// A phone number: 7 to 15 digits, written with a leading `+` or with separators (a bare
/// run of digits is more often an id or an amount), not mostly single digits, and not a
/// date or an IPv4 address.
fn is_phone(candidate: &str) -> bool {
    let digits = candidate.chars().filter(char::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return false;
    }
    let separated = candidate.contains([' ', '.', '-', '(', ')']);
    if !candidate.starts_with('+') && !separated {
        return false;
    }
    let groups: Vec<&str> = candidate
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let singles = groups.iter().filter(|g| g.len() == 1).count();
    if singles * 2 >= groups.len() {
        return false;
    }
    !DATE.is_match(candidate) && !IPV4.is_match(candidate)
}

/// Masks and restores the values of one task's calls: the same value always gets the same
/// placeholder within a session, so the model can refer to it, and every placeholder it
/// echoes is put back.
#[derive(Debug)]
pub struct PiiSession<'a> {
    kinds: &'a [PiiKind],
    by_value: HashMap<String, String>,
    by_placeholder: HashMap<String, String>,
    counters: HashMap<String, u32>,
}

impl<'a> PiiSession<'a> {
    pub(crate) fn new(kinds: &'a [PiiKind]) -> Self {
        Self {
            kinds,
            by_value: HashMap::new(),
            by_placeholder: HashMap::new(),
            counters: HashMap::new(),
        }
    }

    /// How many distinct values were masked so far.
    pub fn masked(&self) -> usize {
        self.by_value.len()
    }

    /// `text` with every configured kind of value replaced by its placeholder. Kinds are
    /// applied custom patterns first (the operator's own, most specific), then e-mail, card,
    /// phone (a card number is never taken for a phone number).
    pub fn mask(&mut self, text: &str) -> String {
        let mut text = text.to_owned();
        for kind in self.kinds {
            text = self.mask_kind(kind, &text);
        }
        text
    }

    fn mask_kind(&mut self, kind: &PiiKind, text: &str) -> String {
        let regex: &Regex = match kind {
            PiiKind::Email => &EMAIL,
            PiiKind::Phone => &PHONE,
            PiiKind::Card => &CARD,
            PiiKind::Custom { regex, .. } => regex,
        };
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in regex.find_iter(text) {
            let value = m.as_str();
            let accepted = match kind {
                PiiKind::Card => is_card(value),
                PiiKind::Phone => {
                    let before = text[..m.start()].chars().next_back();
                    let after = text[m.end()..].chars().next();
                    !before.is_some_and(|c| c.is_alphanumeric())
                        && !after.is_some_and(|c| c.is_alphanumeric())
                        && is_phone(value)
                }
                PiiKind::Email | PiiKind::Custom { .. } => !value.is_empty(),
            };
            if !accepted {
                continue;
            }
            out.push_str(&text[last..m.start()]);
            out.push_str(&self.placeholder(kind.label(), value));
            last = m.end();
        }
        out.push_str(&text[last..]);
        out
    }

    fn placeholder(&mut self, label: &str, value: &str) -> String {
        if let Some(p) = self.by_value.get(value) {
            return p.clone();
        }
        let n = self.counters.entry(label.to_owned()).or_insert(0);
        *n += 1;
        let key = format!("{label}_{n}");
        self.by_value.insert(value.to_owned(), format!("[{key}]"));
        self.by_placeholder.insert(key.clone(), value.to_owned());
        format!("[{key}]")
    }

    /// `text` with every placeholder of this session put back; a placeholder it never gave
    /// out (one the model made up) stays as it is.
    pub fn restore(&self, text: &str) -> String {
        if self.by_placeholder.is_empty() {
            return text.to_owned();
        }
        PLACEHOLDER
            .replace_all(text, |caps: &regex::Captures<'_>| {
                match self.by_placeholder.get(&caps[1]) {
                    Some(value) => value.clone(),
                    None => caps[0].to_owned(),
                }
            })
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<PiiKind> {
        vec![PiiKind::Email, PiiKind::Card, PiiKind::Phone]
    }

    #[test]
    fn luhn_accepts_real_test_numbers_and_refuses_others() {
        for good in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "79927398713",
        ] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in [
            "4111111111111112",
            "1234567890123456",
            "79927398710",
            "",
            "12a4",
        ] {
            assert!(!luhn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn emails_phones_and_cards_are_masked_and_restored() {
        let kinds = all();
        let mut s = PiiSession::new(&kinds);
        let text = "Mail jane.doe+x@mail.example.co.uk, call +1 (415) 555-0134 or 020 7946 0958, pay with 4111 1111 1111 1111.";
        let masked = s.mask(text);
        assert_eq!(
            masked,
            "Mail [EMAIL_1], call [PHONE_1] or [PHONE_2], pay with [CARD_1]."
        );
        assert_eq!(s.restore(&masked), text);
        assert_eq!(s.masked(), 4);
    }

    #[test]
    fn random_digit_runs_dates_and_addresses_are_not_masked() {
        let kinds = all();
        let mut s = PiiSession::new(&kinds);
        for text in [
            "order 1234 5678 9012 3456 shipped",
            "invoice 4111111111111112",
            "on 2024-01-15 at 10.0.0.12",
            "id 4155550134",
            "steps 1 2 3 4 5 6 7 8",
            "version 1.2.3",
        ] {
            assert_eq!(s.mask(text), text);
        }
        assert_eq!(s.masked(), 0);
    }

    #[test]
    fn the_same_value_gets_the_same_placeholder_across_texts() {
        let kinds = all();
        let mut s = PiiSession::new(&kinds);
        assert_eq!(s.mask("a@b.io and c@d.io"), "[EMAIL_1] and [EMAIL_2]");
        assert_eq!(s.mask("again c@d.io, a@b.io"), "again [EMAIL_2], [EMAIL_1]");
    }

    #[test]
    fn placeholders_the_model_echoes_are_restored_and_made_up_ones_kept() {
        let kinds = all();
        let mut s = PiiSession::new(&kinds);
        s.mask("write to ops@example.com");
        let answer = "I wrote to [EMAIL_1] (and cc [EMAIL_1]); [EMAIL_2] and [PHONE_1] are unknown; [email_1] too.";
        assert_eq!(
            s.restore(answer),
            "I wrote to ops@example.com (and cc ops@example.com); [EMAIL_2] and [PHONE_1] are unknown; [email_1] too."
        );
    }

    #[test]
    fn custom_patterns_get_their_own_placeholders() {
        let kinds = vec![
            PiiKind::Custom {
                label: "EMPLOYEE_ID".into(),
                regex: Regex::new(r"EMP-\d{6}").unwrap(),
            },
            PiiKind::Email,
        ];
        let mut s = PiiSession::new(&kinds);
        let masked = s.mask("EMP-123456 (emp@corp.example) and EMP-654321");
        assert_eq!(masked, "[EMPLOYEE_ID_1] ([EMAIL_1]) and [EMPLOYEE_ID_2]");
        assert_eq!(
            s.restore(&masked),
            "EMP-123456 (emp@corp.example) and EMP-654321"
        );
    }

    #[test]
    fn only_the_configured_kinds_are_masked() {
        let kinds = vec![PiiKind::Email];
        let mut s = PiiSession::new(&kinds);
        assert_eq!(
            s.mask("a@b.io +1 415 555 0134 4111 1111 1111 1111"),
            "[EMAIL_1] +1 415 555 0134 4111 1111 1111 1111"
        );
    }
}
