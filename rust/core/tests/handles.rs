//! Handles are indices plus a generation: a handle kept past a reset is an error, not a read of
//! reused memory; a handle from another graph is refused too.

use lmcore_core::{Error, Graph};

#[test]
fn stale_handle_is_an_error_after_reset() {
    let mut g = Graph::<f64>::new();
    let x = g.input(&[2, 3], &[1.0; 6]).unwrap();
    let y = g.gelu(x).unwrap();
    assert!(g.value(y).is_ok());
    g.reset();
    let _fresh = g.input(&[2, 3], &[2.0; 6]).unwrap(); // reuses the same slot and index
    assert!(matches!(g.value(y), Err(Error::StaleHandle { .. })));
    assert!(matches!(g.gelu(x), Err(Error::StaleHandle { .. })));
    let msg = g.value(x).unwrap_err().to_string();
    assert!(msg.contains("stale"), "{msg}");
}

#[test]
fn handle_from_another_graph_is_refused() {
    let mut a = Graph::<f64>::new();
    let mut b = Graph::<f64>::new();
    let x = a.input(&[2], &[1.0, 2.0]).unwrap();
    let _ = b.input(&[2], &[1.0, 2.0]).unwrap();
    assert!(matches!(b.value(x), Err(Error::ForeignHandle(_))));
}

#[test]
fn bad_shapes_and_ids_are_errors() {
    let mut g = Graph::<f32>::new();
    let x = g.input(&[2, 3], &[0.5; 6]).unwrap();
    let w = g.input(&[4, 5], &[0.5; 20]).unwrap();
    assert!(matches!(g.linear(x, w, None), Err(Error::Shape(_))));
    assert!(matches!(g.input(&[2, 2], &[1.0; 3]), Err(Error::Shape(_))));
    assert!(matches!(g.input_ids(&[2], [0i64, 9].into_iter(), 5), Err(Error::TokenOutOfRange { id: 9, limit: 5 })));
    assert!(matches!(g.input_ids(&[1], [-1i64].into_iter(), 5), Err(Error::TokenOutOfRange { id: -1, .. })));
    let qkv = g.input(&[1, 2, 6], &[0.1; 12]).unwrap();
    assert!(g.attention(qkv, 4).is_err());
    let s = g.input(&[1], &[1.0]).unwrap();
    assert!(g.add(s, x).is_err());
}

#[test]
fn ignored_targets_count_for_nothing() {
    use lmcore_core::IGNORE_ID;
    // Rows 0 and 2 of three are ignored: the loss is row 1's alone, and their logits get no gradient.
    let logits: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut g = Graph::<f64>::new();
    let x = g.input(&[3, 4], &logits).unwrap();
    let tg = g.input_targets(&[3], [IGNORE_ID, 2, IGNORE_ID].into_iter(), 4).unwrap();
    let loss = g.cross_entropy(x, tg).unwrap();
    let row = &logits[4..8];
    let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
    assert!((g.value(loss).unwrap()[0] - (lse - row[2])).abs() < 1e-12);
    g.backward(loss).unwrap();
    let grad = g.grad(x).unwrap();
    assert!(grad[..4].iter().chain(&grad[8..]).all(|&d| d == 0.0));
    assert!(grad[4..8].iter().any(|&d| d != 0.0));
    // No counted row: a zero loss and zero gradients, not NaN.
    g.reset();
    let x = g.input(&[3, 4], &logits).unwrap();
    let tg = g.input_targets(&[3], [IGNORE_ID; 3].into_iter(), 4).unwrap();
    let loss = g.cross_entropy(x, tg).unwrap();
    assert_eq!(g.value(loss).unwrap()[0], 0.0);
    g.backward(loss).unwrap();
    assert!(g.grad(x).unwrap().iter().all(|&d| d == 0.0));
    // The ignore id is only a target: as an input id, or in an embedding, it is out of range.
    assert!(matches!(g.input_ids(&[1], [IGNORE_ID].into_iter(), 4), Err(Error::TokenOutOfRange { id: -100, .. })));
    let table = g.input(&[4, 2], &[0.0; 8]).unwrap();
    let ids = g.input_targets(&[1], [IGNORE_ID].into_iter(), 4).unwrap();
    assert!(matches!(g.embedding(ids, table), Err(Error::TokenOutOfRange { id: -100, limit: 4 })));
}
