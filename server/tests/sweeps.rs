//! Named parameter spaces and outputs end to end (#18): a grid swept by a
//! real Python model through the library, whose best point is known
//! analytically; random search decoded the same way by every agent and the
//! client; the kept top-K against a full scan; `ttgctl results` and
//! `best` over the run; and bad spaces refused with the field named.

mod common;

use std::time::Duration;

use common::*;
use ttg_proto::space::{Axis, Sample, Space, Value};
use ttg_proto::v1::{BestRequest, RunState, StatusRequest, SubmitRequest};

/// A worker-mode exec request over a named space and outputs.
fn sweep_req(
    space: &Space,
    outputs: &[&str],
    chunk: u64,
    program: &std::path::Path,
) -> SubmitRequest {
    let mut req = exec_req(0, chunk, program, &[("mode", "worker")], 3);
    req.space = Some(space.to_wire());
    req.outputs = outputs.iter().map(|s| s.to_string()).collect();
    req.fail_fast = Some(0);
    req
}

fn grid(axes: &[&str], repeat: u64) -> Space {
    Space {
        axes: axes.iter().map(|a| Axis::parse(a).expect("axis")).collect(),
        repeat,
        sample: None,
    }
}

fn num(v: &ttg_proto::v1::NamedValue) -> f64 {
    v.value
        .as_ref()
        .and_then(Value::from_wire)
        .and_then(|x| x.as_f64())
        .unwrap_or(f64::NAN)
}

/// A 7 × 5 × 3 grid with 2 repeats through a Python model taking keyword
/// arguments and returning two outputs: the minimum of `loss` is at
/// x = 3, y = 0.5, act = "b", rep = 0, and Status, Watch, Best (reading
/// few chunks, and all of them), `ttgctl best` and `ttgctl results` all say
/// so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grid_finds_its_analytic_best_everywhere() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = py_model(
        dir.path(),
        "bowl.py",
        "@ttg.kernel\n\
         def model(x, y, act, rep):\n\
         \x20   bump = {'a': 1.0, 'b': 0.0, 'c': 2.0}[act]\n\
         \x20   return {'loss': (x - 3) ** 2 + (y - 0.5) ** 2 + bump + rep / 1000, 'acc': -x * y}\n",
    );
    let redis = Redis::start();
    let prefix = prefix();
    let server = Server::start(&redis.url, &prefix).await;
    let mut c = control(&server.url).await;
    let _agents: Vec<Agent> = (0..2)
        .map(|i| {
            Agent::spawn(
                &server.url,
                &redis.url,
                &prefix,
                &format!("sweep-{i}"),
                2,
                &["--allow-exec"],
            )
        })
        .collect();
    let space = grid(&["x=range:0:7", "y=linspace:0:1:5", "act=a,b,c"], 2);
    let run = c
        .submit(sweep_req(&space, &["loss", "acc"], 8, &model))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(run.params, 210);
    let (done, events) = run_end(&mut c, &run.run_id).await;
    assert_eq!(done.state, RunState::Succeeded as i32, "{done:?}");

    // The best point, analytically: x=3, y=0.5, act=b, rep=0 → loss 0.
    let want: Vec<(&str, f64)> = vec![("x", 3.0), ("y", 0.5), ("rep", 0.0)];
    let check = |p: &ttg_proto::v1::Point, what: &str| {
        for (name, v) in &want {
            let got = p.values.iter().find(|x| x.name == *name).map(num);
            assert_eq!(got, Some(*v), "{what}: {name} of {p:?}");
        }
        let act = p
            .values
            .iter()
            .find(|x| x.name == "act")
            .and_then(|x| x.value.as_ref())
            .and_then(Value::from_wire);
        assert_eq!(act, Some(Value::Text("b".into())), "{what}");
    };
    let st = c
        .status(StatusRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.outputs.len(), 2);
    let loss = &st.outputs[0];
    assert_eq!(loss.name, "loss");
    let agg = loss.aggregate.expect("aggregate");
    assert_eq!(agg.count, 210);
    assert_eq!(agg.min, 0.0);
    check(loss.argmin.as_ref().expect("argmin"), "Status argmin");
    // acc = -x*y: smallest at x=6, y=1 (first of its act/rep), largest 0.
    assert_eq!(st.outputs[1].aggregate.expect("acc").min, -6.0);
    // Watch carried the summaries on the terminal event.
    let last = events.last().expect("events");
    assert_eq!(last.outputs.len(), 2, "terminal event carries summaries");
    check(
        last.outputs[0].argmin.as_ref().expect("argmin"),
        "Watch argmin",
    );

    // Best reads only the chunks that can hold the best points; asked for
    // every point it reads them all, in the same order.
    let best = |k: u32, max: bool| {
        let mut c = c.clone();
        let run_id = run.run_id.clone();
        async move {
            c.best(BestRequest {
                run_id,
                output: "loss".into(),
                max,
                k,
            })
            .await
            .expect("best")
            .into_inner()
        }
    };
    let kept = best(10, false).await;
    assert!(
        kept.chunks_read < 27,
        "read {} of 27 chunks",
        kept.chunks_read
    );
    assert_eq!(kept.points.len(), 10);
    check(&kept.points[0], "Best kept");
    assert_eq!(kept.points[0].outputs, vec![0.0, -1.5]);
    let scanned = best(500, false).await;
    assert_eq!(scanned.chunks_read, 27);
    assert_eq!(scanned.points.len(), 210);
    let idx = |r: &ttg_proto::v1::BestResponse, n: usize| {
        r.points.iter().take(n).map(|p| p.index).collect::<Vec<_>>()
    };
    assert_eq!(idx(&kept, 10), idx(&scanned, 10), "pruned = full read");
    // The full order is the brute-force one: by loss, then index.
    let mut brute: Vec<(f64, u64)> = scanned
        .points
        .iter()
        .map(|p| (p.outputs[0], p.index))
        .collect();
    brute.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert_eq!(
        brute.iter().map(|x| x.1).collect::<Vec<_>>(),
        idx(&scanned, 210)
    );
    let losses: Vec<f64> = scanned.points.iter().map(|p| p.outputs[0]).collect();
    assert!(
        losses.windows(2).all(|w| w[0] <= w[1]),
        "sorted: {losses:?}"
    );
    let top_max = best(5, true).await;
    // Largest loss: x = 0 or 6, y = 0 or 1, act = c, rep = 1.
    assert_eq!(top_max.points[0].outputs[0], 9.0 + 0.25 + 2.0 + 0.001);

    // The CLI: best and results.
    let (code, out, err) = ttgctl(
        &server.url,
        &["best", &run.run_id, "--by", "loss", "-n", "3"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1. #")
            && out.contains("x=3 y=0.5 act=b rep=0")
            && out.contains("loss=0 acc=-1.5"),
        "{out}"
    );
    let (code, out, err) = ttgctl(&server.url, &["results", &run.run_id]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "index,x,y,act,rep,loss,acc");
    assert_eq!(lines.len(), 211);
    // Row i is point i: index → point as documented.
    for (i, line) in lines[1..].iter().enumerate() {
        let p = space.point(i as u64);
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], i.to_string());
        for (cell, v) in cells[1..5].iter().zip(&p) {
            assert_eq!(*cell, v.to_string(), "row {i}");
        }
    }
    let (code, out, _) = ttgctl(
        &server.url,
        &[
            "results",
            &run.run_id,
            "-o",
            "jsonl",
            "--sort",
            "loss",
            "--limit",
            "2",
        ],
    );
    assert_eq!(code, 0);
    let first: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("row")).expect("json");
    assert_eq!(first["loss"], 0.0);
    assert_eq!(first["act"], "b");
    let pq = dir.path().join("out.parquet");
    let (code, _, err) = ttgctl(
        &server.url,
        &[
            "results",
            &run.run_id,
            "-o",
            "parquet",
            "--file",
            pq.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&pq).expect("parquet");
    assert!(
        bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
        "a Parquet file"
    );
    let (code, _, err) = ttgctl(&server.url, &["best", &run.run_id, "--by", "f1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("output: run")
            && err.contains("has no output \"f1\"; its outputs are loss, acc"),
        "{err}"
    );
}

/// Random search: every agent and the client decode the same points — a
/// model that returns its own coordinates stores exactly the points the
/// client computes from (space, seed, i); draws stay within bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_points_are_the_same_on_every_agent() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = py_model(
        dir.path(),
        "echo.py",
        "@ttg.kernel\n\
         def model(lr, depth, drop):\n\
         \x20   return {'lr': lr, 'depth': depth, 'drop': drop}\n",
    );
    let redis = Redis::start();
    let prefix = prefix();
    let server = Server::start(&redis.url, &prefix).await;
    let mut c = control(&server.url).await;
    let _agents: Vec<Agent> = (0..3)
        .map(|i| {
            Agent::spawn(
                &server.url,
                &redis.url,
                &prefix,
                &format!("sample-{i}"),
                1,
                &["--allow-exec"],
            )
        })
        .collect();
    let space = Space {
        axes: [
            "lr=loguniform:1e-5:1e-1",
            "depth=randint:2:6",
            "drop=uniform:0:0.5",
        ]
        .iter()
        .map(|a| Axis::parse(a).expect("axis"))
        .collect(),
        repeat: 1,
        sample: Some(Sample { n: 300, seed: 42 }),
    };
    // Outputs named like the axes are refused: a point's columns must be
    // unambiguous.
    let e = c
        .submit(sweep_req(&space, &["lr", "depth", "drop"], 7, &model))
        .await
        .expect_err("clash");
    assert!(
        e.message().contains("outputs: \"lr\" is also an axis name"),
        "{}",
        e.message()
    );
    // Same model, outputs renamed in the library's dict: rename there.
    let model = py_model(
        dir.path(),
        "echo2.py",
        "@ttg.kernel\n\
         def model(lr, depth, drop):\n\
         \x20   return {'o_lr': lr, 'o_depth': depth, 'o_drop': drop}\n",
    );
    let run = c
        .submit(sweep_req(&space, &["o_lr", "o_depth", "o_drop"], 7, &model))
        .await
        .expect("submit")
        .into_inner();
    let (done, events) = run_end(&mut c, &run.run_id).await;
    assert_eq!(done.state, RunState::Succeeded as i32, "{done:?}");
    let agents: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(ttg_proto::v1::event::Kind::ChunkCompleted(c)) => Some(c.agent_id.clone()),
            _ => None,
        })
        .collect();
    assert!(
        agents.len() >= 2,
        "several agents decoded points: {agents:?}"
    );
    let (code, out, err) = ttgctl(&server.url, &["results", &run.run_id, "-o", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 300);
    for (i, r) in rows.iter().enumerate() {
        let p = space.point(i as u64);
        let f = |v: &Value| v.as_f64().expect("number");
        assert_eq!(r["o_lr"].as_f64(), Some(f(&p[0])), "point {i}");
        assert_eq!(r["o_depth"].as_f64(), Some(f(&p[1])), "point {i}");
        assert_eq!(r["o_drop"].as_f64(), Some(f(&p[2])), "point {i}");
        assert_eq!(r["lr"].as_f64(), Some(f(&p[0])));
        let d = f(&p[1]);
        assert!(
            (2.0..6.0).contains(&d) && d.fract() == 0.0,
            "randint in 2..6: {d}"
        );
        assert!((1e-5..1e-1).contains(&f(&p[0])));
    }
}

/// Bad spaces and outputs are refused with the field named and the allowed
/// values; a dry run validates without storing; `--params` runs keep their
/// meaning and results format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_spaces_are_refused_and_dry_runs_store_nothing() {
    let redis = Redis::start();
    let prefix = prefix();
    let server = Server::start(&redis.url, &prefix).await;
    let mut c = control(&server.url).await;
    let sub = |space: Option<ttg_proto::v1::Space>, params: u64, outputs: &[&str]| SubmitRequest {
        params,
        space,
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        ..submit_req(1, 10, 0)
    };
    let w = |axes: &[&str]| Some(grid(axes, 1).to_wire());
    use ttg_proto::v1::{axis::Kind, Axis as WAxis, AxisValues, Bounds, Space as WSpace, Spaced};
    let raw = |kind: Kind| {
        Some(WSpace {
            axes: vec![WAxis {
                name: "x".into(),
                kind: Some(kind),
            }],
            ..Default::default()
        })
    };
    let cases: Vec<(SubmitRequest, &str)> = vec![
        (
            sub(w(&["x=1,2", "x=3"]), 0, &[]),
            "space.axes: axis \"x\" is given twice",
        ),
        (
            sub(w(&["1x=1"]), 0, &[]),
            "space.axes: axis names are 1..=64 letters",
        ),
        (
            sub(raw(Kind::Values(AxisValues { values: vec![] })), 0, &[]),
            "space.axes[x]: a list of 1..=10000 values",
        ),
        (
            sub(
                raw(Kind::Linspace(Spaced {
                    start: 0.0,
                    stop: 1.0,
                    n: 0,
                })),
                0,
                &[],
            ),
            "space.axes[x]: the axis has no values",
        ),
        (
            sub(
                raw(Kind::Linspace(Spaced {
                    start: 0.0,
                    stop: f64::NAN,
                    n: 3,
                })),
                0,
                &[],
            ),
            "space.axes[x]: bounds must be finite",
        ),
        (
            sub(
                raw(Kind::Uniform(Bounds {
                    low: 0.0,
                    high: 1.0,
                })),
                0,
                &[],
            ),
            "need random search",
        ),
        (
            sub(
                raw(Kind::Uniform(Bounds {
                    low: 0.0,
                    high: f64::INFINITY,
                })),
                0,
                &[],
            ),
            "bounds must be finite",
        ),
        (
            sub(
                Some(WSpace {
                    axes: vec![WAxis {
                        name: "x".into(),
                        kind: None,
                    }],
                    ..Default::default()
                }),
                0,
                &[],
            ),
            "space.axes[0].kind: missing",
        ),
        (
            sub(
                w(&["x=range:0:100000", "y=range:0:100000", "z=range:0:100000"]),
                0,
                &[],
            ),
            "space: 1000000000000000 points; at most 10000000000 (--max-params)",
        ),
        (
            sub(w(&["x=1,2"]), 5, &[]),
            "params: give params or space, not both",
        ),
        (
            sub(
                Some(WSpace {
                    axes: vec![],
                    ..Default::default()
                }),
                0,
                &[],
            ),
            "space.axes: 1..=32 axes",
        ),
        (
            sub(None, 10, &["loss", "loss"]),
            "outputs: \"loss\" is given twice",
        ),
        (
            sub(w(&["x=1,2"]), 0, &["x"]),
            "outputs: \"x\" is also an axis name",
        ),
        (
            sub(w(&["index=1,2"]), 0, &[]),
            "\"index\" is the results' first column",
        ),
    ];
    for (req, needle) in cases {
        let e = c.submit(req.clone()).await.expect_err(needle);
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{needle}: {}",
            e.message()
        );
        assert!(
            e.message().contains(needle),
            "want {needle:?}, got {:?}",
            e.message()
        );
        // A dry run says the same.
        let mut dry = req;
        dry.dry_run = true;
        let e = c.submit(dry).await.expect_err(needle);
        assert!(e.message().contains(needle), "dry run: {}", e.message());
    }
    // A good dry run answers with the size and stores nothing.
    let mut dry = sub(w(&["x=range:0:10", "y=a,b,c"]), 0, &["loss"]);
    dry.dry_run = true;
    let r = c.submit(dry).await.expect("dry run").into_inner();
    assert_eq!((r.run_id.as_str(), r.params, r.chunks), ("", 30, 3));
    let runs = c
        .list_runs(ttg_proto::v1::ListRunsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(runs.runs.is_empty(), "a dry run stores nothing");
    let (code, out, err) = ttgctl(
        &server.url,
        &[
            "submit",
            "--axis",
            "lr=logspace:1e-4:1e-1:4",
            "--axis",
            "depth=2,4",
            "--repeat",
            "2",
            "--outputs",
            "loss,acc",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("dry run: 16 points in 1 chunks; axes lr, depth, rep; outputs loss, acc"),
        "{out}"
    );
    assert!(
        out.contains("#1 lr=0.0001 depth=2 rep=1")
            && out.contains("#2 lr=0.0001 depth=4 rep=0")
            && out.contains("… 11 more"),
        "{out}"
    );
    let (code, _, err) = ttgctl(
        &server.url,
        &[
            "submit",
            "--axis",
            "x=range:0:100000",
            "--axis",
            "y=range:0:100000",
            "--axis",
            "z=range:0:100000",
            "--dry-run",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("space: 1000000000000000 points; at most 10000000000"),
        "{err}"
    );
    let (code, _, err) = ttgctl(&server.url, &["submit", "--axis", "x=linspace:0:1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--axis \"x=linspace:0:1\": axes[x]: expected linspace:START:STOP:N"),
        "{err}"
    );
    let (code, _, err) = ttgctl(&server.url, &["submit", "--params", "10", "--axis", "x=1"]);
    assert_eq!(code, 2, "{err}");

    // --params: one output named value, results as before.
    let _agent = InProcAgent::start(&server.url, &redis.url, &prefix, 2);
    let run = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(
        (st.aggregate.expect("agg").sum * 100.0).round(),
        50_003_550.0
    );
    assert_eq!(st.outputs.len(), 1);
    assert_eq!(st.outputs[0].name, "value");
    let (code, out, _) = ttgctl(&server.url, &["results", &run.run_id]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("param,value\n0,13\n1,20.1\n"),
        "{}",
        &out[..40]
    );
    let (code, out, err) = ttgctl(&server.url, &["best", &run.run_id, "-n", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1. #") && out.contains("p="), "{out}");
}

/// `exec mode=chunk` over a named space: a one-point chunk gets its
/// coordinates as `TTG_AXIS_<name>` (a shell script prints them back as its
/// two outputs), and a Python model through the library reads its points
/// as JSON lines and prints each point's outputs — the values land under
/// the right output and point. Built-in collatz computes on the typed first
/// coordinate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_mode_programs_and_built_in_kernels_get_the_points() {
    let dir = tempfile::tempdir().expect("tmp");
    let env = script(
        dir.path(),
        "env.sh",
        "#!/bin/sh\ncat > /dev/null\necho \"$TTG_AXIS_x $TTG_AXIS_y\"\n",
    );
    let py = py_model(
        dir.path(),
        "twice.py",
        "@ttg.kernel\n\
         def model(x, y):\n\
         \x20   return {'sx': 2 * x, 'sy': 3 * y}\n",
    );
    let redis = Redis::start();
    let prefix = prefix();
    let server = Server::start(&redis.url, &prefix).await;
    let mut c = control(&server.url).await;
    let _agent = Agent::spawn(
        &server.url,
        &redis.url,
        &prefix,
        "chunky",
        2,
        &["--allow-exec"],
    );
    let space = grid(&["x=range:0:4", "y=linspace:0:1:3"], 1);
    let mut results = Vec::new();
    for (program, chunk, outs, want) in [
        (&env, 1, ["ax", "ay"], [1.0, 1.0]),
        (&py, 5, ["sx", "sy"], [2.0, 3.0]),
    ] {
        let mut req = exec_req(0, chunk, program, &[("mode", "chunk")], 1);
        req.space = Some(space.to_wire());
        req.outputs = outs.iter().map(|s| s.to_string()).collect();
        let run = c.submit(req).await.expect("submit").into_inner();
        let (done, _) = run_end(&mut c, &run.run_id).await;
        assert_eq!(done.state, RunState::Succeeded as i32, "{done:?}");
        let (code, out, err) = ttgctl(&server.url, &["results", &run.run_id]);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("index,x,y,{},{}", outs[0], outs[1]));
        for (i, line) in lines[1..].iter().enumerate() {
            let cells: Vec<f64> = line
                .split(',')
                .map(|v| v.parse().expect("number"))
                .collect();
            let p = space.point(i as u64);
            let (x, y) = (p[0].as_f64().expect("x"), p[1].as_f64().expect("y"));
            assert_eq!(
                cells[3..],
                [want[0] * x, want[1] * y],
                "row {i} of {}",
                program.display()
            );
        }
        results.push(lines.len());
    }
    assert_eq!(results, vec![13, 13]);

    // Collatz over a named integer axis: its first coordinate, typed.
    let mut req = submit_req(0, 4, 0);
    req.kernel = "collatz".into();
    req.args.clear();
    req.space = Some(grid(&["n=range:1:30:3", "k=a,b"], 1).to_wire());
    let run = c.submit(req).await.expect("submit").into_inner();
    let _ = run_end(&mut c, &run.run_id).await;
    let best = c
        .best(BestRequest {
            run_id: run.run_id.clone(),
            output: String::new(),
            max: true,
            k: 20,
        })
        .await
        .expect("best")
        .into_inner();
    for p in &best.points {
        let n = num(&p.values[0]) as u64;
        assert_eq!(
            p.outputs[0],
            ttg_proto::kernels::collatz_steps(n) as f64,
            "n = {n}"
        );
    }
    // A text first axis is refused by name.
    let mut req = submit_req(0, 4, 0);
    req.kernel = "collatz".into();
    req.args.clear();
    req.max_attempts = Some(1);
    req.space = Some(grid(&["k=a,b"], 1).to_wire());
    let run = c.submit(req).await.expect("submit").into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(st.state, RunState::Failed as i32);
    assert!(
        st.dead_chunks[0]
            .error
            .contains("collatz computes on the first axis (k) as a whole number ≥ 0, got a"),
        "{:?}",
        st.dead_chunks
    );
}
