//! Golden dumps: the schedule and kernel IR of a few fixed models, compared as text with
//! `tests/golden/*.txt`, so a change in the generated code shows up as a diff in review.
//! `UPDATE_GOLDEN=1 cargo test -p kiln-codegen --test golden` rewrites the files.

use kiln_codegen::{models, Program};

fn golden(name: &str, m: models::Model) {
    let p = Program::compile(&m.graph, &m.wanted, &m.inputs).unwrap();
    // The first line names the program by a hash of its key: leave it out.
    let sched: Vec<&str> = p.schedule_text().lines().skip(1).collect();
    let text = format!(
        "; {name}: schedule and kernels (UPDATE_GOLDEN=1 rewrites this file)\n{}\n\n{}",
        sched.join("\n"),
        p.kernels_text()
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  - {a}\n  + {b}", i + 1))
            .collect();
        panic!(
            "{name}: generated code differs from {} ({} vs {} lines); first differences:\n{}\n\
             (UPDATE_GOLDEN=1 to accept)",
            path.display(),
            want.lines().count(),
            text.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn mlp_training_step() {
    golden("mlp_step", models::mlp_step(4, 8, 16, 3).unwrap());
}

#[test]
fn conv_relu_pool_block() {
    golden("conv_block", models::conv_block(2, 3, 4, 8).unwrap());
}
