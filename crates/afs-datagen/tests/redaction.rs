//! The redaction table: what the default redactor replaces, and what it must leave alone.

use afs_datagen::{RedactionCounts, Redactor};

fn check(input: &str, expected: &str) {
    let redactor = Redactor::new();
    let mut counts = RedactionCounts::default();
    let got = redactor.redact(input, &mut counts);
    assert_eq!(got, expected, "redacting {input:?}");
    // Redaction is idempotent: placeholders are never matched again.
    let mut again = RedactionCounts::default();
    assert_eq!(
        redactor.redact(&got, &mut again),
        got.as_ref(),
        "second pass over {got:?}"
    );
    assert_eq!(
        again.total(),
        0,
        "second pass over {got:?} counted {again:?}"
    );
}

fn counts(input: &str) -> RedactionCounts {
    let mut counts = RedactionCounts::default();
    Redactor::new().redact(input, &mut counts);
    counts
}

#[test]
fn emails() {
    check("mail alice@example.com now", "mail <EMAIL> now");
    check("a.b+tag@sub.example.co.uk", "<EMAIL>");
    check("联系我：alice@example.com谢谢", "联系我：<EMAIL>谢谢");
    check("<bob_99@mail-server.org>", "<<EMAIL>>");
    // Not addresses.
    check("user@localhost", "user@localhost");
    check("@handle and foo@bar", "@handle and foo@bar");
    check("price is 5 @ 3.50", "price is 5 @ 3.50");
}

#[test]
fn phones() {
    check("call 555-123-4567 today", "call <PHONE> today");
    check("call (555) 123-4567", "call <PHONE>");
    check("555.123.4567", "<PHONE>");
    check("+1 555 123 4567", "<PHONE>");
    check("1-800-555-0199", "<PHONE>");
    check("+44 20 7946 0958", "<PHONE>");
    check("+33 1 23 45 67 89", "<PHONE>");
    check("+14155552671", "<PHONE>");
    // Not phone numbers: dates, times, short numbers, bare digit runs, longer dashed runs.
    check("on 2024-01-15 at 10:30", "on 2024-01-15 at 10:30");
    check("15/01/2024", "15/01/2024");
    check("call 911 or 112", "call 911 or 112");
    check("id 5551234567", "id 5551234567");
    check("isbn 978-3-16-148410-0", "isbn 978-3-16-148410-0");
    check("part 555-123-4567-89", "part 555-123-4567-89");
    check("+12 34", "+12 34");
    check("rose +1.5 points", "rose +1.5 points");
}

#[test]
fn credit_cards_are_luhn_checked() {
    check("card 4111 1111 1111 1111 exp", "card <CREDIT_CARD> exp");
    check("4111-1111-1111-1111", "<CREDIT_CARD>");
    check("4111111111111111", "<CREDIT_CARD>");
    check("amex 378282246310005", "amex <CREDIT_CARD>");
    // Sixteen digits failing Luhn are left alone.
    check("4111 1111 1111 1112", "4111 1111 1111 1112");
    check("order 1234567812345678", "order 1234567812345678");
    // Too short or too long.
    check("123456789012", "123456789012");
    check("12345678901234567890123", "12345678901234567890123");
}

#[test]
fn ip_addresses() {
    check("server 192.168.1.10 down", "server <IP_ADDRESS> down");
    check("from 10.0.0.1.", "from <IP_ADDRESS>.");
    check("host 2001:db8::1 up", "host <IP_ADDRESS> up");
    check("link fe80::1ff:fe23:4567:890a", "link <IP_ADDRESS>");
    check("mapped ::ffff:192.0.2.1", "mapped <IP_ADDRESS>");
    check(
        "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "full <IP_ADDRESS>",
    );
    // A bare dotted quad is treated as an address, even if it was meant as a version.
    check("version 1.2.3.4", "version <IP_ADDRESS>");
    // Not addresses: out of range, longer dotted runs, glued to a letter, 3-part versions,
    // localhost, code paths, times, MAC addresses.
    check("999.1.1.1", "999.1.1.1");
    check("1.2.3.4.5", "1.2.3.4.5");
    check("v1.2.3.4", "v1.2.3.4");
    check("release 1.2.3", "release 1.2.3");
    check("::1 is localhost", "::1 is localhost");
    check("use std::io::Write; a::b", "use std::io::Write; a::b");
    check("at 12:30:45", "at 12:30:45");
    check("mac 00:1A:2B:3C:4D:5E", "mac 00:1A:2B:3C:4D:5E");
    check("ratio 3.14", "ratio 3.14");
}

#[test]
fn secrets() {
    check("key sk-abcdefghijklmnopqrstuvwx", "key <SECRET>");
    check("sk-proj-abc123def456ghi789jkl012", "<SECRET>");
    check("aws AKIAIOSFODNN7EXAMPLE!", "aws <SECRET>!");
    check("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "<SECRET>");
    check("slack xoxb-123456789012-abcdefghij", "slack <SECRET>");
    check("sk_live_abcdefghijklmnop1234", "<SECRET>");
    check(
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "Authorization: Bearer <SECRET>",
    );
    check("bearer abc123def456", "bearer <SECRET>");
    check("password=hunter2", "password=<SECRET>");
    check("password: hunter2 then", "password: <SECRET> then");
    check("DB_PASSWORD=s3cr3t&user=x", "DB_PASSWORD=<SECRET>&user=x");
    check(r#"{"api_key": "abc 123"}"#, r#"{"api_key": "<SECRET>"}"#);
    check("client_secret='xyz'", "client_secret='<SECRET>'");
    check("secret: swordfish", "secret: <SECRET>");
    check("API-KEY = 0123abcd", "API-KEY = <SECRET>");
    check(
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----\ndone",
        "key:\n<SECRET>\ndone",
    );
    check(
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B (truncated",
        "<SECRET>",
    );
    check(
        "private_key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----",
        "private_key: <SECRET>",
    );
    // Not secrets: prose, short tokens after "bearer", words that merely contain a key name.
    check("the bearer of bad news", "the bearer of bad news");
    check("The secret is out.", "The secret is out.");
    check("secretary: Jane", "secretary: Jane");
    check("passwords are hashed", "passwords are hashed");
    check("task-force sk-short", "task-force sk-short");
    check("password=", "password=");
    check(
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
    );
}

#[test]
fn ordinary_text_is_untouched() {
    for text in [
        "",
        "Hello, world!",
        "The 65816 is a 16-bit CPU used in the SNES (1990).",
        "Chapter 3.2, page 14; see figure 1.",
        "日本語のテキスト 😀 and emoji",
        "x = 10 + 20 - 30",
        "2024-01-15T10:30:00Z",
        "call me at home",
        "https://example.com/path?q=1",
    ] {
        check(text, text);
    }
}

#[test]
fn counts_per_kind() {
    let c = counts(
        "mail a@b.io or c@d.io, call 555-123-4567, card 4111111111111111, \
         ip 10.1.2.3 and 2001:db8::2, key AKIAIOSFODNN7EXAMPLE and password=x",
    );
    assert_eq!(
        c,
        RedactionCounts {
            email: 2,
            phone: 1,
            credit_card: 1,
            ip_address: 2,
            secret: 2
        }
    );
}
