"""Reference-free 2D classification (maximum likelihood, torch, CPU or CUDA from the same code).

Entry point: :func:`run_classify2d` (``cryoflow classify2d``); :mod:`~cryoflow.classify2d.run`
documents the schedule and the outputs.

Modules: :mod:`basis` (the steerable basis), :mod:`data` (STAR + stacks in, CTF, batch
preparation), :mod:`em` (E-step), :mod:`averages` (M-step: Wiener averages, FRC, SSNR,
centring, re-seeding), :mod:`run` (iterations, checkpoints, outputs), :mod:`report`,
:mod:`truth` (scores against the simulator's truth), :mod:`bench`.

Design: why a steerable basis, and what was measured
----------------------------------------------------
On the 2-core CPU this project targets an FFT runs ~45x slower per flop than a matrix
multiply (``shared/PERFORMANCE.md``). A brute-force search (an FFT cross-correlation of
every particle with every class at every rotation) costs about N·K·R·(3B² + 5B² log₂B)
flops: for 20,000 particles, 50 classes, 72 rotations at box 64 some 2×10¹³ flops per
iteration, hours on this CPU. So every step here is a matrix multiply:

- **Basis**: each image's 2D DFT is evaluated exactly on polar rings (ring spacing 1/B)
  and expanded in angular Fourier orders (a Fourier-Bessel expansion, see
  :mod:`basis`). A rotation by α multiplies order m by ``e^{-imα}``; inner products are
  weighted sums; a resolution limit keeps the first rings. At box 64 with a 28-pixel mask
  this is ~1,670 complex coefficients (about the number of pixels in the mask), built once
  (~4 s) as a pixels -> coefficients matrix, with an exact least-squares synthesis back to
  pixels (relative error 0.15% on a projection, 0.5% on band-limited noise in the norm).
- **Rotations**: the correlation with a class at *all* A angles is
  ``Σ_m λ_m Re(h_m e^{imα})`` with ``h_m = Σ_j ω_j c_jm g*_jm``: one batched matmul over
  the orders, then one matmul with a cos/sin table; the M-step's back-rotation is the
  transposed table. A = 2(M+1) angles: exactly what the current resolution resolves
  (40 angles at 30 Å, ~200 at Nyquist).
- **Translations**: class references are shifted on a 1-pixel disk grid (29 shifts at box
  64) before entering the basis, so translations are just more references. In the last
  passes every particle is first re-centred on its previous estimate (a phase ramp in the
  same FFT as the CTF) and only 9 shifts around it are searched.
- **Coarse-to-fine**: a coarse search (orders m <= 16, translations on a 2-pixel lattice,
  all classes) keeps the 4 most likely classes per particle; the full search over all
  translations and angles runs on those only (the idea of RELION's adaptive
  oversampling). The resolution limit starts at 30 Å and grows 2 rings past where the
  classes' spectral SNR falls below 1 (the half-set FRC is optimistic in 2D: both halves
  are aligned against one reference, so it is reported but not used to schedule).
- **Mini-batches**: early iterations use ``max(100 K, 2000)`` random particles
  (VDAM/cryoSPARC-like), the last 5 all of them.

Measured while developing (1 thread, on a CPU shared with other jobs, so upper bounds):
the first exhaustive version (every class, translation and angle through the matmuls)
took 17.8 ms per particle per full-resolution iteration at K = 50 (copies of the
``N·K·T·M`` correlation tensor dominated); class pruning and per-class batched matmuls
brought it to ~1 ms (T = 9) - 4.6 ms (T = 29, low resolution, heavily loaded machine).
Small matrix multiplies collapse with 2 threads on a busy machine (2 vs 59 GFLOP/s with
1 thread), so ``--threads`` is offered and the benchmark reports CPU time beside wall time.

Result (``cryoflow bench classify2d --threads 1``, 20,000 particles, box 64, K = 50, 25
iterations, one thread of a shared 2-core machine): 184 s wall / 169 s CPU, peak RSS 1.03 GB;
purity 0.981, in-plane angle error median 1.3° (93% within 5°), half-set resolution of the
largest classes 1.12x (median) that of averages built with the true poses. 5k / 20k / 80k
particles: 101 / 169 / 436 s CPU, peak RSS 1.04 / 1.03 / 1.09 GB.

Memory (the benchmark samples /proc every 50 ms and splits peak RSS into anonymous memory,
the heap and tensors a run needs, and file-backed pages, shared libraries and mapped stack
pages the kernel can drop): the file-backed part is ~155 MB at any N (stacks are opened
memory-mapped per batch and closed, so their pages do not pile up). The anonymous peak was
1.41 / 1.51 / 1.63 GB at 5k / 20k / 80k particles (1 thread). What grew was not
per-particle state but (1) the cache of basis matrices of every resolution limit a run had
passed through (~80 MB per stage near Nyquist; more particles reach finer limits, so more
and larger stages): now only the last two are kept; (2) heap blocks freed by the E-step
and left resident by glibc: trimmed after every batch of 1,024 particles. The last
iteration also no longer builds the references and sums of the full translation grid
when every particle searches locally, the E-step no longer copies each batch's
coefficients in rotated form, and the coarse class search runs in pieces of ~550
particles. After these changes: anonymous peak 0.90 / 0.89 / 0.95 GB at 5k / 20k / 80k
(total peak RSS 1.04 / 1.03 / 1.09 GB; it was 1.55 / 1.70 / 1.77 GB before).

Side by side with ASPIRE 0.14.3's class averaging (``--aspire``; the same simulated stack,
one thread each, ASPIRE given phase-flipped images; purity of a neighbourhood scored as
that of a class, a mirrored neighbour counted with its antipodal view, see
:func:`~cryoflow.classify2d.bench.group_purity`): 5,000 particles, K = 50 against
neighbourhoods of 100 (the same mean group size): classify2d 145 s CPU, purity 0.976;
ASPIRE 33 s CPU to classify + 17 s CPU for 50 averages, purity 0.282 (0.349 with its
default 50 neighbours, 0.532 with 10; random groups of 100: 0.112); its default class
selection averages all 5,000 neighbourhoods first (~1,770 s CPU, extrapolated). 20,000
particles, K = 50 against 400: classify2d 216 s CPU, purity 0.956; ASPIRE 226 s CPU to
classify and make 50 averages, purity 0.367 (0.566 with 50 neighbours, 0.686 with 10;
random groups: 0.089). ASPIRE's rotation-invariant features (bispectrum of a steerable
PCA) are fast but do not find same-view neighbours at these SNRs (0.03-0.08).

CTF and noise: the particle side is multiplied by its own CTF (exact, astigmatism
included) before entering the basis, so references stay CTF-free; the norm term uses the
ring-averaged CTF². Class averages are Wiener filtered (``Σ CTF·x / (Σ CTF² + σ²/τ²)``,
τ² twice the class's signal power, as RELION's T = 2), noise σ² per ring is re-estimated
each iteration from the expected residual power. Tensors are float32.
"""

from cryoflow.classify2d.run import Settings, run_classify2d

__all__ = ["Settings", "run_classify2d"]
