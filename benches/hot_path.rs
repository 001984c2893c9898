//! The proxy's pass-through work, piece by piece, in isolation: what `request_filter`,
//! `upstream_request_filter` and `logging` do to a request no policy matches, timed per call on
//! a realistic request head, next to a baseline of cloning that head. It says which piece of the
//! gap between stepgate and plain pingora (the `proxy` bench's path q) is worth optimising.
//!
//! Run: `cargo bench --bench hot_path`. Prints the median of 7 runs of 200,000 calls per piece.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use pingora::http::RequestHeader;
use std::time::Duration;

use stepgate::domain::canonical::RouterModel;
use stepgate::domain::policy::{
    Decision, HostPattern, Matcher, Mode, PathPattern, Policy, PolicySet, StepUp,
};
use stepgate::proxy::facts::{self, RequestView};
use stepgate::telemetry::metrics;

const CALLS: u32 = 200_000;
const RUNS: usize = 7;

/// A browser-like GET as it reaches the proxy.
fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/account/overview?tab=recent", None)
        .unwrap_or_else(|_| unreachable!("a valid request line"));
    for (name, value) in [
        ("host", "bank.example"),
        (
            "user-agent",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abc123; theme=dark"),
    ] {
        req.insert_header(name, value)
            .unwrap_or_else(|_| unreachable!("valid header"));
    }
    req
}

/// The README's example rules: a step-up on transfers, a bypass for the internal network. The
/// benched request matches neither, like most traffic.
fn policies() -> PolicySet {
    let transfers = Matcher {
        hosts: vec![HostPattern::new("bank.example")],
        methods: vec!["POST".to_owned()],
        paths: vec![
            PathPattern::new("/transfer"),
            PathPattern::new("/api/payments/**"),
        ],
        ..Matcher::default()
    };
    let internal = Matcher {
        networks: vec![
            "10.0.0.0/8"
                .parse()
                .unwrap_or_else(|_| unreachable!("a network")),
        ],
        ..Matcher::default()
    };
    PolicySet {
        policies: vec![
            Policy {
                name: "transfers".to_owned(),
                matcher: transfers,
                decision: Decision::StepUp(StepUp {
                    bind: Vec::new(),
                    auth_type: "confirm_push".to_owned(),
                    freshness: Duration::from_secs(300),
                    mode: Mode::Challenge,
                    message: None,
                }),
            },
            Policy {
                name: "internal-bypass".to_owned(),
                matcher: internal,
                decision: Decision::Allow,
            },
        ],
        default: Decision::Allow,
    }
}

/// Median nanoseconds per call of `piece`.
fn time(mut piece: impl FnMut()) -> f64 {
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..CALLS {
                piece();
            }
            started.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn main() {
    let template = request();
    let peer = Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    let policies = policies();
    metrics::register_all();

    let baseline = time(|| {
        black_box(template.clone());
    });
    let request_facts = time(|| {
        let req = black_box(&template);
        let scheme = facts::scheme(peer, req, &[], false);
        let client_ip = facts::client_ip(peer, req, &[]);
        let view = RequestView::read(req, client_ip, &RouterModel::default(), &policies)
            .expect("the bench request is readable");
        black_box((scheme, view.decide(&policies).decision));
    });
    let header_rewrite = time(|| {
        let mut req = template.clone();
        facts::prepare_upstream(&mut req, peer, "https", &[])
            .unwrap_or_else(|_| unreachable!("valid headers"));
        black_box(req);
    });
    let metric_pair = time(|| {
        let arrived = Instant::now();
        metrics::proxy_added_latency("allow", arrived.elapsed());
        metrics::proxy_request("none", "allow");
    });
    println!("pass-through work per request (median of {RUNS} x {CALLS} calls):");
    println!("  clone of the request head (baseline)   {baseline:>8.0} ns");
    println!("  request facts + policy decision        {request_facts:>8.0} ns");
    println!(
        "  upstream header rewrite (incl. clone)  {header_rewrite:>8.0} ns  ({:+.0} ns over the clone)",
        header_rewrite - baseline
    );
    println!("  two metrics (counter + histogram)      {metric_pair:>8.0} ns");
}
