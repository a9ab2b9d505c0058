//! Loading: multi-document streams, JSON, lists, skipped kinds, positions, and robustness on
//! hostile input.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use mesh_api::load;
use mesh_api::{Kind, Severity};

const TWO_DOCS: &str = "# leading comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n# only a comment\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: shop\nspec:\n  host: reviews\n  subsets:\n  - name: V1\n    labels: {version: v1}\n";

#[test]
fn multi_document_stream_keeps_lines_and_order() {
    let report = load::load_str(TWO_DOCS, Some("in.yaml"));
    assert_eq!(
        report.documents.len(),
        1,
        "the Namespace loads, the rule is refused"
    );
    assert_eq!(report.documents[0].resource.kind(), Kind::Namespace);
    assert_eq!(report.documents[0].origin.line, 2);
    let errs: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("in.yaml:18: DestinationRule shop/reviews: spec.subsets[0].name: "),
        "{}",
        errs[0]
    );
}

#[test]
fn every_served_version_reads_into_one_type() {
    for v in ["v1", "v1beta1", "v1alpha3"] {
        let text = format!(
            "apiVersion: networking.istio.io/{v}\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n"
        );
        let report = load::load_str(&text, None);
        assert!(
            report.is_valid(),
            "{v}: {:?}",
            report.errors().collect::<Vec<_>>()
        );
        assert_eq!(
            report.documents[0].api_version,
            format!("networking.istio.io/{v}")
        );
    }
    let text =
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}\n";
    let report = load::load_str(text, None);
    let errs: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert!(errs[0].contains("apiVersion: apiVersion security.istio.io/v1alpha1 is not served for PeerAuthentication; use one of security.istio.io/v1, security.istio.io/v1beta1"), "{errs:?}");
}

#[test]
fn json_and_lists_are_read() {
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    ]}"#;
    let report = load::load_str(json, Some("list.json"));
    assert!(
        report.is_valid(),
        "{:?}",
        report.errors().collect::<Vec<_>>()
    );
    let kinds: Vec<Kind> = report.documents.iter().map(|d| d.resource.kind()).collect();
    assert_eq!(kinds, [Kind::ServiceAccount, Kind::PeerAuthentication]);
}

#[test]
fn unhandled_kinds_warn_and_are_skipped() {
    let text = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: t}\nspec: {}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n";
    let report = load::load_str(text, Some("t.yaml"));
    assert!(report.is_valid());
    assert_eq!(report.documents.len(), 1);
    let warnings: Vec<String> = report.warnings().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("t.yaml:1: warning: WasmPlugin default/t: kind WasmPlugin (extensions.istio.io/v1alpha1) is not handled"), "{}", warnings[0]);
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\n  namespcae: x\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      wieght: 100\n";
    let report = load::load_str(text, Some("vs.yaml"));
    let errs: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0]
            .starts_with("vs.yaml:5: VirtualService default/r: metadata.namespcae: unknown field"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].starts_with("vs.yaml:11: VirtualService default/r: spec.http[0].route[0]"),
        "{}",
        errs[1]
    );
    assert!(errs[1].contains("unknown field `wieght`"), "{}", errs[1]);
}

#[test]
fn syntax_errors_point_at_their_line() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: [b\n";
    let report = load::load_str(text, Some("s.yaml"));
    assert_eq!(
        report.documents.len(),
        1,
        "the good document before the bad one still loads"
    );
    let err = report.errors().next().expect("an error").to_string();
    assert!(
        err.starts_with("s.yaml:") && err.contains("YAML syntax"),
        "{err}"
    );
}

/// Inputs that must be refused or skipped without a panic.
const HOSTILE: [&str; 14] = [
    "",
    "---\n---\n...\n",
    "\u{0}\u{1}\u{2}binary",
    "[1, 2, 3]",
    "just a string",
    "apiVersion: 5\nkind: [x]\n",
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: 7\nspec: 9\n",
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: {a: b}, http: [null, 3, {route: 'x'}]}\n",
    "a: &a [*a, *a]\n",
    "a: &a [x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d]\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999999999}]}\n",
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {'-1': {mode: STRICT}, 80: null}}\n",
    "\t- tab\n\tindented: x\n",
    "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
];

#[test]
fn hostile_input_never_panics() {
    for text in HOSTILE {
        let report = load::load_str(text, Some("h.yaml"));
        assert!(
            report
                .documents
                .iter()
                .all(|d| d.resource.kind() != Kind::VirtualService),
            "{text:?}"
        );
    }
    let deep = "[".repeat(10_000);
    let _ = load::load_str(&deep, None);
}

/// Byte-level mutations of real documents: whatever they turn into, loading answers.
#[test]
fn mutated_documents_never_panic() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/samples/order-app/shipping-split.yaml"
    ))
    .expect("sample");
    let bytes = base.as_bytes();
    let alphabet = b" \n\t:-[]{}&*!|>'\"#%@`,?0123456789aZ\\";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused = 0;
    for _ in 0..1500 {
        let mut text = bytes.to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % text.len();
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 3 {
                0 => text[at] = c,
                1 => text.insert(at, c),
                _ => {
                    text.remove(at);
                }
            }
        }
        let text = String::from_utf8_lossy(&text);
        let report = load::load_str(&text, None);
        if report
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
        {
            refused += 1;
        }
    }
    eprintln!("{refused} of 1500 mutations refused, none crashed");
}
