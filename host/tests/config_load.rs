//! The configuration: the embedded default, partial files, unknown keys, bad values,
//! validation messages and warnings.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use pinstream_host::config::{
    AckSetting, AdminSection, AlertWhen, AuthSection, CAPACITY_PRESETS, CapacitySection, Config,
    ConfigError, ConsumersSection, ControlSection, DEFAULT_TOML, DurabilitySetting, EngineSection,
    GrpcSection, HttpSection, IdleSetting, PipelineSection, StorageSection, TcpSection, UdpSection,
};
use serde::de::{DeserializeOwned, Deserializer, Visitor};

fn parse(text: &str) -> Config {
    Config::from_toml(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The parse error of `text`: (key, line, column, message, display).
fn parse_err(text: &str) -> (String, usize, usize, String, String) {
    match Config::from_toml(text, "test.toml") {
        Err(e @ ConfigError::Parse { .. }) => {
            let shown = e.to_string();
            let ConfigError::Parse {
                key,
                line,
                column,
                message,
                ..
            } = e
            else {
                unreachable!()
            };
            (key, line, column, message, shown)
        }
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

/// The validation problems of `text` (which must parse).
fn problems(text: &str) -> Vec<String> {
    match parse(text).validate() {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems for {text:?}, got {other:?}"),
    }
}

fn warnings(text: &str) -> Vec<String> {
    parse(text).validate().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn embedded_default_parses_validates_and_equals_the_code_defaults() {
    let cfg = Config::embedded_default();
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.validate().unwrap(), Vec::<String>::new(), "no warnings");
    assert_eq!(cfg.tcp.listen, Some("127.0.0.1:7070".parse().unwrap()));
    assert_eq!(cfg.udp.listen, Some("127.0.0.1:7071".parse().unwrap()));
    assert_eq!(cfg.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(cfg.storage.dir, PathBuf::from("./pinstream-data"));
    assert_eq!(
        cfg.control.to_core(),
        pinstream_core::control::ControlConfig::DEFAULT
    );
    assert_eq!(
        cfg.pipeline.retry_policy(),
        pinstream_core::process::RetryPolicy::DEFAULT
    );
    assert_eq!(CAPACITY_PRESETS, &[CapacitySection::DEFAULT]);
    assert_eq!(cfg.capacity, CapacitySection::DEFAULT);
    // An empty file is the default too.
    assert_eq!(parse(""), Config::default());
}

/// A serde `Deserializer` that records the field names a derived `Deserialize` asks for.
struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;
impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe stops here")
    }
}
impl std::error::Error for Stop {}
impl serde::de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields.expect("a struct")
}

#[test]
fn the_default_file_names_every_key() {
    let file: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
    let sections: [(&str, &[&str]); 12] = [
        ("engine", fields_of::<EngineSection>()),
        ("tcp", fields_of::<TcpSection>()),
        ("udp", fields_of::<UdpSection>()),
        ("storage", fields_of::<StorageSection>()),
        ("pipeline", fields_of::<PipelineSection>()),
        ("capacity", fields_of::<CapacitySection>()),
        ("control", fields_of::<ControlSection>()),
        ("admin", fields_of::<AdminSection>()),
        ("consumers", fields_of::<ConsumersSection>()),
        ("http", fields_of::<HttpSection>()),
        ("grpc", fields_of::<GrpcSection>()),
        ("auth", fields_of::<AuthSection>()),
    ];
    let mut top: Vec<&str> = sections.iter().map(|(s, _)| *s).collect();
    // `[[bridge]]` is a list, empty by default: the file shows it as a commented example
    // (`the_commented_bridge_example_parses`).
    top.push("bridge");
    assert_eq!(fields_of::<Config>(), top.as_slice());
    top.pop();
    for (section, fields) in sections {
        let table = file[section].as_table().unwrap();
        for f in fields {
            assert!(table.contains_key(*f), "default.toml lacks {section}.{f}");
        }
        assert_eq!(table.len(), fields.len(), "[{section}]");
    }
}

#[test]
fn the_http_and_auth_sections_parse_validate_and_warn() {
    let d = Config::default();
    assert_eq!(d.http.listen, None, "the gateway is off by default");
    assert!(d.auth.tokens.is_empty());
    let hash = pinstream_host::gateway::hash_token("s3cret");
    let ok = format!(
        "[http]\nlisten = \"127.0.0.1:7080\"\n[[auth.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\ntopics = [\"default\"]\nrate = 100\nburst = 200\n"
    );
    let c = parse(&ok);
    assert_eq!(c.http.listen, Some("127.0.0.1:7080".parse().unwrap()));
    assert_eq!(
        c.auth.tokens[0].hash_bytes().map(|b| b[0]),
        u8::from_str_radix(&hash[..2], 16).ok()
    );
    assert!(warnings(&ok).is_empty());
    // Beyond loopback without tokens: a loud warning.
    let w = warnings("[http]\nlisten = \"0.0.0.0:7080\"\n");
    assert!(w.iter().any(|w| w.contains("no authentication")), "{w:?}");
    // Unknown keys are refused with their line; bad values named by key.
    let (key, line, _, _, _) = parse_err("[http]\nlisten = \"off\"\nmax_body = 3\n");
    assert_eq!((key.as_str(), line), ("http.max_body", 3));
    let p = problems(
        "[http]\nmax_body_bytes = 1\nretry_after_secs = 0\n[[auth.tokens]]\nname = \"\"\nsha256 = \"xyz\"\ntopics = [\"nope\"]\nrate = 5\n",
    );
    for want in [
        "http.max_body_bytes = 1",
        "http.retry_after_secs = 0",
        "auth.tokens[0].name",
        "auth.tokens[0].sha256",
        "auth.tokens[0].topics: \"nope\"",
        "auth.tokens[0].burst = 0",
    ] {
        assert!(p.iter().any(|p| p.starts_with(want)), "{want}: {p:?}");
    }
    let p = problems("[engine]\nplacement = \"pinned\"\n[http]\ncpu = 0\n");
    assert!(p.iter().any(|p| p.starts_with("http.cpu = 0")), "{p:?}");
}

#[test]
fn auth_tokens_file_adds_its_tokens_after_the_configs_and_names_itself_in_errors() {
    let dir = std::env::temp_dir().join(format!("pinstream-tokens-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = pinstream_host::gateway::hash_token("from-file");
    let file = dir.join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"file\"\nsha256 = \"{hash}\"\ntopics = [\"*\"]\nrate = 5\nburst = 5\n"
        ),
    )
    .unwrap();
    let inline = pinstream_host::gateway::hash_token("inline");
    let text = format!(
        "[auth]\ntokens_file = {:?}\n[[auth.tokens]]\nname = \"inline\"\nsha256 = \"{inline}\"\n\
         topics = [\"default\"]\n",
        file.display().to_string()
    );
    let cfg = parse(&text);
    let names: Vec<&str> = cfg.auth.tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["inline", "file"]);
    assert_eq!(
        (cfg.auth.tokens[1].sha256.as_str(), cfg.auth.tokens[1].rate),
        (&*hash, 5)
    );
    assert!(warnings(&text).is_empty(), "{:?}", warnings(&text));
    // A name used in both: refused like two inline tokens with one name.
    std::fs::write(
        &file,
        format!("[[tokens]]\nname = \"inline\"\nsha256 = \"{hash}\"\ntopics = [\"*\"]\n"),
    )
    .unwrap();
    let p = problems(&text);
    assert!(
        p.iter().any(|p| p.contains("another token has that name")),
        "{p:?}"
    );
    // A bad entry: the error names the file, the key, the line.
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"x\"\nsha256 = \"ab\"\ntopik = [\"*\"]\n",
    )
    .unwrap();
    let e = Config::from_toml(&text, "<inline>")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokens.toml (auth.tokens_file):4:") && e.contains("topik"),
        "{e}"
    );
    // A file that is not there: a read error naming it.
    std::fs::remove_file(&file).unwrap();
    let e = Config::from_toml(&text, "<inline>")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read config file") && e.contains("tokens.toml"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tcp_tls_cpu_is_a_cpu_never_an_engine_threads() {
    assert_eq!(Config::default().tcp.tls_cpu, None);
    assert_eq!(parse("[tcp]\ntls_cpu = 3").tcp.tls_cpu, Some(3));
    assert_eq!(parse("[tcp]\ntls_cpu = \"none\"").tcp.tls_cpu, None);
    let (key, _, _, _, _) = parse_err("[tcp]\ntls_cpu = -2\n");
    assert_eq!(key, "tcp.tls_cpu");
    let p = problems("[engine]\nplacement = \"pinned\"\n[tcp]\ntls_cpu = 1\n");
    assert!(
        p.iter()
            .any(|p| p.starts_with("tcp.tls_cpu = 1") && p.contains("engine.process_cpu")),
        "{p:?}"
    );
    assert!(warnings("[engine]\nplacement = \"unpinned\"\n[tcp]\ntls_cpu = 1\n").is_empty());
}

#[test]
fn the_grpc_section_parses_validates_and_warns() {
    let d = Config::default();
    assert_eq!(d.grpc.listen, None, "the gRPC gateway is off by default");
    let c = parse("[grpc]\nlisten = \"127.0.0.1:7090\"\nmax_concurrent_streams = 32\n");
    assert_eq!(c.grpc.listen, Some("127.0.0.1:7090".parse().unwrap()));
    assert_eq!(c.grpc.max_concurrent_streams, 32);
    assert!(warnings("[grpc]\nlisten = \"127.0.0.1:7090\"\n").is_empty());
    // Beyond loopback: as loud as [http].
    let w = warnings("[grpc]\nlisten = \"0.0.0.0:7090\"\n");
    assert!(
        w.iter()
            .any(|w| w.starts_with("grpc.listen") && w.contains("no authentication")),
        "{w:?}"
    );
    let (key, line, _, _, _) = parse_err("[grpc]\nlisten = \"off\"\nmax_streams = 3\n");
    assert_eq!((key.as_str(), line), ("grpc.max_streams", 3));
    let p = problems(
        "[http]\nlisten = \"127.0.0.1:7080\"\n[grpc]\nlisten = \"127.0.0.1:7080\"\n\
         max_concurrent_streams = 0\nmax_message_bytes = 1\nstream_window = 0\ntls_key = \"k.pem\"\n",
    );
    for want in [
        "grpc.listen = \"127.0.0.1:7080\": the same address as http.listen",
        "grpc.max_concurrent_streams = 0",
        "grpc.max_message_bytes = 1",
        "grpc.stream_window = 0",
        "grpc.tls_key is set but grpc.tls_cert is not",
    ] {
        assert!(p.iter().any(|p| p.starts_with(want)), "{want}: {p:?}");
    }
    let p =
        problems("[grpc]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n");
    assert!(
        p.iter()
            .any(|p| p.starts_with("grpc.tls_cert = \"/nonexistent/c.pem\"")),
        "{p:?}"
    );
}

#[test]
fn tcp_auth_needs_tokens_and_udp_off_or_explicitly_open() {
    use pinstream_host::config::TcpAuth;
    assert_eq!(
        Config::default().tcp.auth,
        TcpAuth::None,
        "old clients keep working"
    );
    assert!(!Config::default().udp.allow_unauthenticated);
    let hash = pinstream_host::gateway::hash_token("s3cret");
    let token =
        format!("[[auth.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\ntopics = [\"default\"]\n");
    // Tokens, UDP off: fine, and the auth is on.
    let ok = format!("[tcp]\nauth = \"token\"\n[udp]\nlisten = \"off\"\n{token}");
    assert_eq!(parse(&ok).tcp.auth, TcpAuth::Token);
    assert!(warnings(&ok).is_empty(), "{:?}", warnings(&ok));
    // No token to check against.
    let p = problems("[tcp]\nauth = \"token\"\n[udp]\nlisten = \"off\"\n");
    assert!(
        p.iter()
            .any(|p| p.starts_with("tcp.auth = \"token\" with no [[auth.tokens]]")),
        "{p:?}"
    );
    // UDP (on by default) has no HELLO: refused unless explicitly allowed, then warned
    // about beyond loopback.
    let p = problems(&format!("[tcp]\nauth = \"token\"\n{token}"));
    assert!(
        p.iter().any(|p| p.contains("udp.allow_unauthenticated")),
        "{p:?}"
    );
    let open = format!(
        "[tcp]\nauth = \"token\"\n[udp]\nallow_unauthenticated = true\nlisten = \"0.0.0.0:7071\"\n{token}"
    );
    let w = warnings(&open);
    assert!(
        w.iter()
            .any(|w| w.starts_with("udp.listen") && w.contains("no authentication")),
        "{w:?}"
    );
    // The binary port beyond loopback: loud without auth, about clear text with it.
    let w = warnings("[tcp]\nlisten = \"0.0.0.0:7070\"\n");
    assert!(
        w.iter()
            .any(|w| w.contains("ANYONE") && w.contains("tcp.auth")),
        "{w:?}"
    );
    let w = warnings(&format!(
        "[tcp]\nlisten = \"0.0.0.0:7070\"\nauth = \"token\"\n[udp]\nlisten = \"off\"\n{token}"
    ));
    assert!(w.iter().any(|w| w.contains("clear text")), "{w:?}");
    assert!(!w.iter().any(|w| w.contains("ANYONE")), "{w:?}");
    let (key, _, _, _, _) = parse_err("[tcp]\nauth = \"password\"\n");
    assert_eq!(key, "tcp.auth");
}

#[test]
fn the_consumers_section_parses_and_refuses_an_engine_cpu() {
    let d = Config::default().consumers;
    assert_eq!(d.listen, Some("127.0.0.1:7072".parse().unwrap()));
    assert_eq!((d.cpu, d.max_connections, d.max_named), (None, 64, 1024));
    assert_eq!(parse("[consumers]\ncpu = \"none\"").consumers.cpu, None);
    assert_eq!(parse("[consumers]\ncpu = -1").consumers.cpu, None);
    assert_eq!(parse("[consumers]\ncpu = 3").consumers.cpu, Some(3));
    assert_eq!(
        parse("[consumers]\nlisten = \"off\"").consumers.listen,
        None
    );
    let (key, _, _, message, _) = parse_err("[consumers]\ncpu = -2\n");
    assert_eq!(key, "consumers.cpu");
    assert!(message.contains("-1 / \"none\""), "{message}");
    // A pinned engine thread's CPU is refused, naming both keys.
    let p = problems("[engine]\nplacement = \"pinned\"\n[consumers]\ncpu = 1\n");
    assert!(
        p.iter()
            .any(|p| p.starts_with("consumers.cpu = 1") && p.contains("engine.process_cpu")),
        "{p:?}"
    );
    // Unpinned, any CPU will do; under `auto` the engine decides at start.
    assert!(warnings("[consumers]\ncpu = 1\n").is_empty());
    assert!(warnings("[engine]\nplacement = \"unpinned\"\n[consumers]\ncpu = 1\n").is_empty());
    let p = problems("[consumers]\nmax_connections = 0\nmax_named = 0\n");
    assert!(
        p.iter()
            .any(|p| p.starts_with("consumers.max_connections = 0")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|p| p.starts_with("consumers.max_named = 0")),
        "{p:?}"
    );
}

#[test]
fn a_partial_file_overrides_only_its_keys() {
    let cfg = parse(
        "[tcp]\nmax_connections = 10\nlisten = \"off\"\n\n[storage]\ndurability = \"always\"\n\
         [pipeline]\ntopics = [\"a\", \"b\"]\n\
         alert_rules = [{ topic = \"b\", when = \"below\", value = -5 }, { topic = \"a\", when = \"always\" }]\n",
    );
    let d = Config::default();
    assert_eq!(
        cfg.tcp,
        TcpSection {
            max_connections: 10,
            listen: None,
            ..d.tcp.clone()
        }
    );
    assert_eq!(
        cfg.storage,
        StorageSection {
            durability: DurabilitySetting::Always,
            ..d.storage.clone()
        }
    );
    assert_eq!(cfg.pipeline.topics, ["a", "b"]);
    assert_eq!(cfg.pipeline.budget, d.pipeline.budget);
    assert_eq!(cfg.pipeline.alert_rules.len(), 2);
    assert_eq!(cfg.pipeline.alert_rules[0].when, AlertWhen::Below);
    assert_eq!(
        cfg.pipeline.alert_rules[0].condition(),
        pinstream_core::process::realtime::Condition::Below(-5)
    );
    assert_eq!(cfg.pipeline.alert_rules[1].value, 0);
    assert_eq!(cfg.pipeline.topic_id("b"), Some(1));
    for (a, b) in [
        (format!("{:?}", cfg.engine), format!("{:?}", d.engine)),
        (format!("{:?}", cfg.udp), format!("{:?}", d.udp)),
        (format!("{:?}", cfg.capacity), format!("{:?}", d.capacity)),
        (format!("{:?}", cfg.control), format!("{:?}", d.control)),
        (format!("{:?}", cfg.admin), format!("{:?}", d.admin)),
    ] {
        assert_eq!(a, b);
    }
    cfg.validate().unwrap();
    // Dotted keys and every enum spelling.
    let cfg = parse(
        "engine.idle = \"spin-yield\"\nengine.ack = \"none\"\nstorage.durability = \"none\"\n",
    );
    assert_eq!(cfg.engine.idle, IdleSetting::SpinYield);
    assert_eq!(cfg.engine.ack, AckSetting::None);
    assert_eq!(cfg.storage.durability, DurabilitySetting::None);
    assert_eq!(
        parse("[engine]\nidle = \"spin\"").engine.idle,
        IdleSetting::Spin
    );
    assert_eq!(
        parse("[engine]\nack = \"accepted\"").engine.ack,
        AckSetting::Accepted
    );
    assert_eq!(parse("[admin]\nlisten = \"\"").admin.listen, None);
    assert_eq!(
        parse("[udp]\nlisten = \"[::1]:0\"").udp.listen,
        Some("[::1]:0".parse().unwrap())
    );
}

#[test]
fn unknown_keys_are_errors_naming_key_and_line() {
    let (key, line, column, message, shown) = parse_err("# a comment\nbogus = 1\n");
    assert_eq!((key.as_str(), line, column), ("bogus", 2, 1));
    assert!(message.contains("unknown field `bogus`"), "{message}");
    assert!(
        message.contains("`engine`") && message.contains("`admin`"),
        "{message}"
    );
    assert!(
        shown.starts_with("test.toml:2:1: bogus: unknown field"),
        "{shown}"
    );

    let (key, line, column, message, _) = parse_err("[udp]\nbatch = 3\n  batchh = 4\n");
    assert_eq!((key.as_str(), line, column), ("udp.batchh", 3, 3));
    assert!(
        message.contains("unknown field `batchh`, expected one of"),
        "{message}"
    );
    assert!(message.contains("`batch`"), "what is allowed: {message}");

    let (key, line, _, _, _) = parse_err("[engine]\n\n[extra]\nx = 1\n");
    assert_eq!((key.as_str(), line), ("extra", 3));

    let (key, line, _, message, _) = parse_err(
        "[pipeline]\nalert_rules = [{ topic = \"default\", when = \"always\", vaule = 1 }]\n",
    );
    assert_eq!((key.as_str(), line), ("pipeline.alert_rules.vaule", 2));
    assert!(message.contains("unknown field `vaule`"), "{message}");
}

#[test]
fn bad_values_are_errors_saying_what_is_allowed() {
    // Wrong type.
    let (key, line, column, message, _) = parse_err("[tcp]\nmax_frame_len = \"big\"\n");
    assert_eq!((key.as_str(), line, column), ("tcp.max_frame_len", 2, 17));
    assert!(message.contains("expected u64"), "{message}");
    // Negative count.
    let (key, _, _, message, _) = parse_err("[tcp]\nmax_connections = -1\n");
    assert_eq!(key, "tcp.max_connections");
    assert!(message.contains("-1"), "{message}");
    // Enums list their values.
    let (key, _, _, message, _) = parse_err("[engine]\nidle = \"sleep\"\n");
    assert_eq!(key, "engine.idle");
    assert!(
        message.contains("unknown variant `sleep`")
            && message.contains("`spin`, `spin-yield`, `spin-park`"),
        "{message}"
    );
    let (key, _, _, message, _) = parse_err("[engine]\nack = \"maybe\"\n");
    assert_eq!(key, "engine.ack");
    assert!(
        message.contains("`none`, `accepted`, `durable`"),
        "{message}"
    );
    let (key, _, _, message, _) = parse_err("[storage]\ndurability = \"sometimes\"\n");
    assert_eq!(key, "storage.durability");
    assert!(
        message.contains("`none`, `interval`, `always`"),
        "{message}"
    );
    let (key, _, _, message, _) =
        parse_err("[pipeline]\nalert_rules = [{ topic = \"default\", when = \"over\" }]\n");
    assert_eq!(key, "pipeline.alert_rules.when");
    assert!(message.contains("`always`, `above`, `below`"), "{message}");
    // Listen addresses.
    let (key, _, _, message, _) = parse_err("[admin]\nlisten = \"localhost:9090\"\n");
    assert_eq!(key, "admin.listen");
    assert!(
        message.contains("\"localhost:9090\"")
            && message.contains("ip:port")
            && message.contains("\"off\""),
        "{message}"
    );
    let (key, _, _, _, _) = parse_err("[tcp]\nlisten = \"127.0.0.1\"\n");
    assert_eq!(key, "tcp.listen");
    // Arrays of the wrong length.
    let (key, _, _, message, _) = parse_err("[control]\ndepth_permille = [1, 2, 3]\n");
    assert_eq!(key, "control.depth_permille");
    assert!(message.contains('4'), "{message}");
    // Broken syntax.
    let (_, line, _, _, _) = parse_err("[tcp]\nmax_connections = 1\n[udp\n");
    assert_eq!(line, 3);
}

#[test]
fn validation_names_each_key_and_the_limit() {
    assert_eq!(
        problems("[tcp]\nmax_frame_len = 10\nrecv_buffer = 10\n"),
        ["tcp.max_frame_len = 10: must be at least 20 (a frame header and trailer)"]
    );
    let p = problems("[tcp]\nmax_frame_len = 16777217\n");
    assert!(
        p.iter()
            .any(|m| m.starts_with("tcp.max_frame_len = 16777217: must be 0 ..= 16777216")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("tcp.recv_buffer = 262144: must be at least tcp.max_frame_len")),
        "{p:?}"
    );
    let p = problems("[tcp]\ninflight_events = 100\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("tcp.inflight_events = 100: must be at least 2047"),
        "{p:?}"
    );
    let p = problems("[engine]\nprocess_cpu = 0\n");
    assert!(
        p[0].starts_with("engine.process_cpu = 0: must differ from engine.ingest_cpu = 0"),
        "{p:?}"
    );
    parse("[engine]\nprocess_cpu = 0\noverprovisioned = true\n")
        .validate()
        .unwrap();
    let w = parse("[storage]\ndurability = \"none\"\n")
        .validate()
        .unwrap();
    assert!(
        w.iter().any(|w| w.starts_with(
            "engine.ack = \"durable\" with storage.durability = \"none\": acks go out once"
        )),
        "{w:?}"
    );
    let p = problems("[udp]\nbatch = 0\nmax_datagram = 70000\n");
    assert_eq!(
        p,
        [
            "udp.batch = 0: must be 1 ..= 1024 (UIO_MAXIOV, the most recvmmsg takes)",
            "udp.max_datagram = 70000: must be 20 ..= 65507 (the largest UDP payload)"
        ]
    );
    let p = problems("[storage]\ndir = \"\"\nretention_bytes = 1000\n");
    assert!(
        p[0].starts_with("storage.dir = \"\": must name a directory"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("storage.retention_bytes = 1000: must be 0 (keep everything) or at least"),
        "{p:?}"
    );
    let p = problems("[pipeline]\nrate_per_source = 10\nbudget = 0\nretry_backoff_us = 20000\n");
    assert!(
        p.iter()
            .any(|m| m.starts_with("pipeline.burst_per_source = 0: must be at least 1")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m
                .starts_with("pipeline.budget = 0: must be 1 ..= capacity.lane_capacity = 16384")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("pipeline.retry_backoff_us = 20000: must be at most")),
        "{p:?}"
    );
    let long = "x".repeat(33);
    let p = problems(&format!(
        "[pipeline]\ntopics = [\"a\", \"{long}\", \"a\", \"tab\\t\"]\nalert_rules = [{{ topic = \"zz\", when = \"always\" }}]\n"
    ));
    assert_eq!(
        p,
        [
            format!(
                "pipeline.topics[1] = \"{long}\": must be 1 ..= 32 bytes (capacity.topic_name_bytes)"
            ),
            "pipeline.topics[2] = \"a\": listed twice".to_owned(),
            "pipeline.topics[3] = \"tab\\t\": must not contain control characters".to_owned(),
            format!(
                "pipeline.alert_rules[0].topic = \"zz\": not in pipeline.topics [\"a\", \"{long}\", \"a\", \"tab\\t\"]"
            ),
        ]
    );
    let p = problems("[pipeline]\ntopics = []\n");
    assert_eq!(
        p,
        ["pipeline.topics has 0 names: must have 1 ..= 64 (capacity.topics)"]
    );
    let p = problems(
        "[control]\ndepth_permille = [500, 400, 850, 950]\ndrop_permille = [1, 2, 3, 1001]\nrecover_permille = 1001\n",
    );
    assert_eq!(
        p,
        [
            "control.depth_permille = [500, 400, 850, 950]: must not decrease (elevated, degraded, critical, emergency)",
            "control.drop_permille = [1, 2, 3, 1001]: each must be at most 1000 (100 %)",
            "control.recover_permille = 1001: must be 0 ..= 1000 (1000 disables hysteresis)",
        ]
    );
    let p = problems("[admin]\nlisten = \"127.0.0.1:7070\"\nrequest_timeout_ms = 0\n");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("admin.listen = \"127.0.0.1:7070\": the same address as tcp.listen"));
    assert!(p[1].starts_with("admin.request_timeout_ms = 0: must be 10 ..= 60000"));
}

#[test]
fn capacity_must_be_a_compiled_preset() {
    let p = problems("[capacity]\npool_slots = 1000\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("[capacity] = { payload_bytes = 256, pool_slots = 1000,"),
        "{}",
        p[0]
    );
    assert!(p[0].contains("compiled into this build"), "{}", p[0]);
    assert!(
        p[0].contains(&CapacitySection::DEFAULT.to_string()),
        "lists the presets: {}",
        p[0]
    );
}

/// The payload arena's size is a run-time key, not a compiled preset: any value up to 1 GiB
/// (0 included: no arena) is accepted; above is a problem naming the key.
#[test]
fn payload_arena_bytes_is_a_run_time_key() {
    for bytes in [0u64, 1 << 20, 64 << 20, 1 << 30] {
        let text = format!("[capacity]\npayload_arena_bytes = {bytes}\n");
        let c = parse(&text);
        c.validate().unwrap_or_else(|e| panic!("{bytes}: {e}"));
        assert_eq!(c.capacity.payload_arena_bytes as u64, bytes);
        let e = pinstream_host::engine::EngineConfig::from_config(&c).unwrap();
        assert_eq!(e.payload_arena_bytes as u64, bytes);
    }
    let p = problems("[capacity]\npayload_arena_bytes = 1073741825\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("capacity.payload_arena_bytes = 1073741825: must be 0 ..= 1073741824"),
        "{}",
        p[0]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = parse("[tcp]\nmax_connections = 0\n[udp]\nbatch = 5000\n")
        .validate()
        .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("config: invalid configuration:\n  - tcp.max_connections = 0"),
        "{shown}"
    );
    assert!(shown.contains("\n  - udp.batch = 5000"), "{shown}");
}

#[test]
fn warnings_for_exposed_servers_and_dead_keys() {
    let w = warnings("[tcp]\nlisten = \"0.0.0.0:7070\"\n[admin]\nlisten = \"[::]:9090\"\n");
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("tcp.listen = \"0.0.0.0:7070\" is not a loopback address"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("admin.listen = \"[::]:9090\" is not a loopback address"),
        "{w:?}"
    );
    let w = warnings("[tcp]\nlisten = \"off\"\n[udp]\nlisten = \"\"\n");
    assert_eq!(
        w,
        ["tcp.listen and udp.listen are both off: the engine takes no input"]
    );
    let w = warnings(
        "[engine]\noverprovisioned = true\nidle = \"spin\"\n[pipeline]\nburst_per_source = 5\n",
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("engine.idle = \"spin\" has no effect"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("pipeline.burst_per_source = 5 has no effect"),
        "{w:?}"
    );
}

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pinstream-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn loading_files_names_them_in_errors() {
    let dir = TempDir::new();
    let good = dir.0.join("good.toml");
    std::fs::write(&good, "[tcp]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let (cfg, warnings) = Config::load_checked(&good).unwrap();
    assert_eq!(cfg.tcp.listen, Some("0.0.0.0:0".parse().unwrap()));
    assert_eq!(warnings.len(), 1);

    let missing = dir.0.join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[tcp]\nmax_frame_len = 10\n").unwrap();
    let err = Config::load_checked(&bad).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{}: invalid configuration:\n  - tcp.max_frame_len = 10",
            bad.display()
        )),
        "{err}"
    );

    let unknown = dir.0.join("unknown.toml");
    std::fs::write(&unknown, "[tcp]\nmax_frame = 10\n").unwrap();
    let err = Config::load(&unknown).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{}:2:1: tcp.max_frame: unknown field",
            unknown.display()
        )),
        "{err}"
    );
}

#[test]
fn engine_placement_is_auto_by_default_and_checked() {
    use pinstream_host::config::PlacementMode;
    assert_eq!(
        Config::embedded_default().engine.placement,
        PlacementMode::Auto
    );
    for (text, mode) in [
        ("auto", PlacementMode::Auto),
        ("pinned", PlacementMode::Pinned),
        ("unpinned", PlacementMode::Unpinned),
    ] {
        let c = parse(&format!("[engine]\nplacement = \"{text}\"\n"));
        assert_eq!(c.engine.placement, mode);
        assert_eq!(mode.as_str(), text);
    }
    let (key, _, _, message, _) = parse_err("[engine]\nplacement = \"sometimes\"\n");
    assert_eq!(key, "engine.placement");
    assert!(
        message.contains("`auto`, `pinned`, `unpinned`"),
        "{message}"
    );
    // Unpinned threads may share a CPU; pinned (or maybe pinned) ones may not.
    warnings("[engine]\nprocess_cpu = 0\nplacement = \"unpinned\"\n");
    let p = problems("[engine]\nprocess_cpu = 0\nplacement = \"auto\"\n");
    assert!(p[0].contains("engine.placement = \"unpinned\""), "{p:?}");
    // The older switch and a forced pinning contradict each other.
    let p = problems("[engine]\noverprovisioned = true\nplacement = \"pinned\"\n");
    assert!(
        p.iter()
            .any(|m| m.starts_with("engine.placement = \"pinned\" contradicts")),
        "{p:?}"
    );
    let w = warnings("[engine]\nplacement = \"unpinned\"\nidle = \"spin\"\n");
    assert!(
        w.iter().any(|m| m.starts_with(
            "engine.idle = \"spin\" has no effect with engine.placement = \"unpinned\""
        )),
        "{w:?}"
    );
}

#[test]
fn the_commented_bridge_example_parses() {
    let example: String = DEFAULT_TOML
        .lines()
        .skip_while(|l| !l.starts_with("# [[bridge]]"))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    assert!(example.starts_with("[[bridge]]"), "{example}");
    let cfg = parse(&example);
    assert_eq!(cfg.bridge.len(), 1);
    assert_eq!(cfg.bridge[0].name, "to-nats");
    assert_eq!(cfg.bridge[0].cpu, Some(3));
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
}
