use super::*;

fn decode_in_reads(reads: &[&[u8]]) -> Vec<Frame> {
    let mut decoder = Decoder::new(DEFAULT_MAX_EVENT_BYTES);
    let mut frames = Vec::new();
    for read in reads {
        decoder.feed(read, &mut frames).expect("valid stream");
    }
    frames
}

fn data(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Event(e) => Some(e.data.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn line_endings_are_all_accepted() {
    let frames = decode_in_reads(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\r"]);
    assert_eq!(data(&frames), ["a", "b", "c"]);
}

#[test]
fn cr_and_lf_in_separate_reads() {
    let frames = decode_in_reads(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
    assert_eq!(data(&frames), ["a\nb"]);
}

#[test]
fn lone_cr_at_read_end_ends_line() {
    let frames = decode_in_reads(&[b"data: a\r", b"\r", b"data: b\n\n"]);
    assert_eq!(data(&frames), ["a", "b"]);
}

#[test]
fn space_after_colon_is_optional() {
    let frames = decode_in_reads(&[b"data:a\n\ndata:  b\n\n"]);
    assert_eq!(data(&frames), ["a", " b"]);
}

#[test]
fn multi_line_data_is_joined() {
    let frames = decode_in_reads(&[b"data: a\ndata: b\ndata\n\n"]);
    assert_eq!(data(&frames), ["a\nb\n"]);
}

#[test]
fn fields_are_read() {
    let frames = decode_in_reads(&[b"event: delta\nid: 7\nretry: 1500\ndata: x\nunknown: y\n\n"]);
    assert_eq!(
        frames,
        [Frame::Event(Event {
            event: Some("delta".to_owned()),
            data: "x".to_owned(),
            id: Some("7".to_owned()),
            retry: Some(1500),
        })]
    );
}

#[test]
fn invalid_retry_is_ignored() {
    let frames = decode_in_reads(&[b"retry: soon\ndata: x\n\n"]);
    assert!(matches!(&frames[0], Frame::Event(e) if e.retry.is_none()));
}

#[test]
fn comments_become_frames() {
    let frames = decode_in_reads(&[b": keep-alive\n:x\ndata: y\n\n"]);
    assert_eq!(frames[0], Frame::Comment("keep-alive".to_owned()));
    assert_eq!(frames[1], Frame::Comment("x".to_owned()));
    assert_eq!(data(&frames), ["y"]);
}

#[test]
fn block_without_data_dispatches_nothing() {
    let frames = decode_in_reads(&[b"event: x\n\nid: 3\n\n\n\ndata: z\n\n"]);
    assert_eq!(frames.len(), 1);
    assert_eq!(data(&frames), ["z"]);
}

#[test]
fn retry_only_block_is_a_retry_frame() {
    let frames = decode_in_reads(&[b"retry: 3000\n\ndata: a\n\n"]);
    assert_eq!(frames[0], Frame::Retry(3000));
    assert_eq!(data(&frames), ["a"]);
}

#[test]
fn utf8_split_inside_a_character() {
    let text = "data: héllo 日本\n\n".as_bytes();
    // Split inside the two-byte é and inside the three-byte 日.
    let e_split = 8;
    let cjk_split = text.len() - 5;
    let frames = decode_in_reads(&[
        &text[..e_split],
        &text[e_split..cjk_split],
        &text[cjk_split..],
    ]);
    assert_eq!(data(&frames), ["héllo 日本"]);
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut decoder = Decoder::new(DEFAULT_MAX_EVENT_BYTES);
    let mut frames = Vec::new();
    assert_eq!(
        decoder.feed(b"data: \xff\n\n", &mut frames),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn oversized_event_is_an_error() {
    let mut decoder = Decoder::new(16);
    let mut frames = Vec::new();
    decoder
        .feed(b"data: 0123456789\n", &mut frames)
        .expect("16 bytes fit");
    assert_eq!(
        decoder.feed(b"data: more\n", &mut frames),
        Err(DecodeError::EventTooLarge { limit_bytes: 16 })
    );
}

#[test]
fn limit_resets_after_each_event() {
    let mut decoder = Decoder::new(16);
    let mut frames = Vec::new();
    for _ in 0..10 {
        decoder
            .feed(b"data: 0123456789\n\n", &mut frames)
            .expect("each event fits");
    }
    assert_eq!(frames.len(), 10);
}

#[test]
fn unterminated_block_is_dropped_at_finish() {
    let mut decoder = Decoder::new(DEFAULT_MAX_EVENT_BYTES);
    let mut frames = Vec::new();
    decoder
        .feed(b"data: a\n\ndata: b", &mut frames)
        .expect("valid");
    assert!(decoder.finish(), "a block was pending");
    assert_eq!(data(&frames), ["a"]);
}

/// Any split of a valid stream into reads decodes to the same frames. The splits are
/// every single cut point plus pseudo-random multi-cut splits from a fixed seed.
#[test]
fn every_split_decodes_the_same() {
    let stream: &[u8] = "data: {\"a\":1}\r\n\r\n: ping\n\nevent: x\ndata: é日\ndata:2\n\nretry: 5\n\nid: 9\rdata: last\r\r"
        .as_bytes();
    let expected = decode_in_reads(&[stream]);
    assert_eq!(data(&expected).len(), 3);
    for cut in 0..=stream.len() {
        let frames = decode_in_reads(&[&stream[..cut], &stream[cut..]]);
        assert_eq!(frames, expected, "single cut at {cut}");
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2_000 {
        let mut cuts = Vec::new();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            cuts.push((state % (stream.len() as u64 + 1)) as usize);
        }
        cuts.sort_unstable();
        let mut reads = Vec::new();
        let mut start = 0;
        for cut in cuts {
            reads.push(&stream[start..cut]);
            start = cut;
        }
        reads.push(&stream[start..]);
        assert_eq!(decode_in_reads(&reads), expected, "round {round}");
    }
}

#[test]
fn encoded_frames_decode_to_themselves() {
    let frames = vec![
        Frame::Event(Event {
            event: Some("message_start".to_owned()),
            data: "line1\nline2".to_owned(),
            id: Some("4".to_owned()),
            retry: Some(10),
        }),
        Frame::Comment("ping".to_owned()),
        Frame::Retry(250),
    ];
    let mut text = String::new();
    for frame in &frames {
        encode_frame(frame, &mut text);
    }
    assert_eq!(decode_in_reads(&[text.as_bytes()]), frames);
}

#[test]
fn parse_keeps_only_events() {
    let events = parse(": c\n\ndata: a\n\n", DEFAULT_MAX_EVENT_BYTES).expect("valid");
    assert_eq!(events.len(), 1);
}
