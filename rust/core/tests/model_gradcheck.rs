//! Whole-model gradient check in f64: every parameter tensor of a tiny GPT (dropout off) gets
//! analytic gradients that match central finite differences of the loss, with GPT-2's block and
//! with every block option on.

use lmcore_core::{Gpt, GptConfig, Graph};

fn loss(g: &mut Graph<f64>, gpt: &Gpt, x: &[i64], y: &[i64]) -> f64 {
    g.reset();
    let ids = g.input_ids(&[2, 5], x.iter().copied(), 11).unwrap();
    let tg = g.input_ids(&[2, 5], y.iter().copied(), 11).unwrap();
    let (_, l) = gpt.forward(g, ids, Some(tg), false).unwrap();
    g.value(l.unwrap()).unwrap()[0]
}

const CLASSIC: GptConfig = GptConfig {
    vocab_size: 11,
    d_model: 8,
    n_head: 2,
    n_layer: 2,
    block_size: 6,
    dropout: 0.0,
    rope: false,
    rmsnorm: false,
    qk_norm: false,
    relu2: false,
    swiglu: false,
    no_bias: false,
    untied_head: false,
    zero_init: false,
    logit_softcap: 0.0,
};

#[test]
fn tiny_gpt_gradients_match_finite_differences() {
    check_gradients(CLASSIC);
}

#[test]
fn tiny_gpt_with_every_block_option_gradients_match_finite_differences() {
    // (zero_init only changes the start; the perturbation below moves the weights off zero.)
    let all = GptConfig { rope: true, rmsnorm: true, qk_norm: true, relu2: true, untied_head: true, zero_init: true, logit_softcap: 2.0, ..CLASSIC };
    check_gradients(all);
}

#[test]
fn tiny_gpt_with_a_llama_block_gradients_match_finite_differences() {
    // rope, RMSNorm, QK-norm (Qwen3's), the gated SiLU MLP and an untied head.
    let llama = GptConfig { rope: true, rmsnorm: true, qk_norm: true, swiglu: true, untied_head: true, no_bias: true, ..CLASSIC };
    check_gradients(llama);
}

fn check_gradients(config: GptConfig) {
    let mut g = Graph::<f64>::new();
    let gpt = Gpt::new(&mut g, config, 3).unwrap();
    // Larger weights than the 0.02 init so every path carries a visible gradient.
    for p in g.params().to_vec() {
        for (i, v) in g.value_mut(p.var).unwrap().iter_mut().enumerate() {
            *v += 0.3 * ((i as f64 * 0.37 + p.offset as f64).sin());
        }
    }
    let x = [1, 4, 2, 9, 0, 3, 3, 7, 10, 5];
    let y = [4, 2, 9, 0, 3, 3, 7, 10, 5, 1];
    loss(&mut g, &gpt, &x, &y);
    // Rebuild the graph to get a handle to the loss, then backpropagate.
    g.reset();
    let ids = g.input_ids(&[2, 5], x.iter().copied(), 11).unwrap();
    let tg = g.input_ids(&[2, 5], y.iter().copied(), 11).unwrap();
    let (_, l) = gpt.forward(&mut g, ids, Some(tg), false).unwrap();
    g.backward(l.unwrap()).unwrap();
    let params = g.params().to_vec();
    let analytic: Vec<Vec<f64>> = params.iter().map(|p| g.grad(p.var).unwrap().to_vec()).collect();

    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for (p, grad) in params.iter().zip(&analytic) {
        // A few entries of each tensor, spread over it.
        let n = p.shape.numel();
        for i in (0..n).step_by((n / 5).max(1)) {
            let orig = g.value(p.var).unwrap()[i];
            g.value_mut(p.var).unwrap()[i] = orig + h;
            let up = loss(&mut g, &gpt, &x, &y);
            g.value_mut(p.var).unwrap()[i] = orig - h;
            let down = loss(&mut g, &gpt, &x, &y);
            g.value_mut(p.var).unwrap()[i] = orig;
            let numeric = (up - down) / (2.0 * h);
            // Relative error above a floor of 1e-3. The difference quotient moves in steps of
            // ulp(loss) / 2h = 2.2e-11 here, and its rounding noise (one to two steps, from the
            // summation order of the BLAS kernel) is what the floor divides: exactly-zero
            // gradients (such as the key bias, to which softmax is invariant) and ones near 2e-5
            // measured 2.2e-11 to 4.6e-11 apart, 4.6e-7 of the old floor of 1e-4 (a margin of 2x
            // that moved with the kernel: 2.4e-7 under Haswell), 4.6e-8 of this one.
            let err = (numeric - grad[i]).abs() / (numeric.abs() + grad[i].abs()).max(1e-3);
            assert!(err < 1e-6, "{}[{i}]: analytic {} vs numeric {numeric} (rel err {err:e})", p.name, grad[i]);
            worst = worst.max(err);
        }
    }
    println!("worst relative error over all parameter tensors: {worst:e}");
}
