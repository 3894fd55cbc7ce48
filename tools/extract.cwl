#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_extract
label: "cryoflow extract: particle stacks, particles.star and a cryoSPARC .cs"
doc: |
  Cuts every picked particle out of its micrograph into normalized stacks (float32 or float16, particles
  white, background mean 0 / std 1 outside a circle of 0.75 x box, ramp removed), optionally
  Fourier-binned and phase-flipped. The box is 1.5 x the particle diameter (the pick step's,
  from its summary.json) rounded up to an FFT-friendly even size unless given. Writes
  Particles/<micrograph>.mrcs, particles.star (RELION 3.1 optics + CTF columns, rlnImageName
  relative to the output folder), particles.cs (cryoSPARC), summary.json and report.html.
  The workflows run it per batch of micrographs (a batch STAR of `cryoflow split` with that
  batch's pick folder, whose diameter is the parameter search's, so every batch gets one box)
  and join the batches with `cryoflow merge`.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 4096
baseCommand: [cryoflow, extract]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  micrographs:
    type: File
    label: Micrographs (STAR)
    doc: RELION 3.1+ micrographs STAR with CTF columns (micrographs_good.star of micassess, or micrographs_ctf.star).
    inputBinding: {prefix: --micrographs}
  coordinates:
    type: Directory
    label: Pick step folder
    doc: Output folder of cryoflow pick (coordinates.star and the coordinate files it names, summary.json with the diameter).
    inputBinding: {prefix: --coordinates}
  images:
    type: Directory
    label: Micrograph folder
    doc: The folder of micrographs the STAR file names (given to the CTF step); the images are looked up in it.
    inputBinding: {prefix: --images}
  box:
    type: int?
    label: Box size (px)
    doc: Box size in output pixels (even); default, 1.5 x the particle diameter rounded up to an FFT-friendly size.
    inputBinding: {prefix: --box}
  bin:
    type: float
    default: 1.0
    label: Binning factor
    doc: Fourier binning factor (>= 1); the particle pixel size is the micrograph's times this factor.
    inputBinding: {prefix: --bin}
  diameter:
    type: float?
    label: Particle diameter (Å)
    doc: Particle diameter in Å for the automatic box; default, the diameter in the pick step's summary.json.
    inputBinding: {prefix: --diameter}
  phase_flip:
    type: boolean
    default: false
    label: Phase flip
    doc: Multiply each particle by the sign of its micrograph's CTF (rlnCtfDataArePhaseFlipped 1).
    inputBinding: {prefix: --phase-flip}
  no_ramp:
    type: boolean
    default: false
    label: Keep the background ramp
    doc: Subtract only the background mean (default, a fitted plane is subtracted).
    inputBinding: {prefix: --no-ramp}
  allow_empty:
    type: boolean
    default: false
    label: Allow no particle
    doc: With no particle to extract, write empty particles.star and particles.cs instead of failing (a batch of a scattered extraction; the merge fails only when every batch is empty).
    inputBinding: {prefix: --allow-empty}
  float16:
    type: boolean
    default: false
    label: 16-bit stacks
    doc: Write the stacks in 16-bit floats (MRC mode 12, half the disk; RELION 4+ and cryoSPARC 4+ read them, RELION 3.1 does not).
    inputBinding: {prefix: --float16}
  seed:
    type: int
    default: 0
    label: Random seed
    doc: Seeds the cryoSPARC particle uids; the same input and seed give the same particles.cs.
    inputBinding: {prefix: --seed}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto (the CPU, faster than CUDA for extraction), cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: extract
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Extract step folder
    doc: particles.star, Particles/*.mrcs, particles.cs, report.html, figures/, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  particles:
    type: File
    label: Particles (STAR)
    doc: RELION 3.1 particles.star (optics + rlnImageName N@Particles/<micrograph>.mrcs, CTF, coordinates); its stacks lie in out_dir.
    outputBinding: {glob: $(inputs.out_name)/particles.star}
  particles_cs:
    type: File
    label: Particles (cryoSPARC .cs)
    doc: particles.cs, the same particles as a cryoSPARC dataset (blob paths relative to out_dir).
    outputBinding: {glob: $(inputs.out_name)/particles.cs}
  report:
    type: File
    label: Report
    doc: report.html, the box and normalization used and why, a particle gallery and the average.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures (particles, box, pixel size, dropped at edges).
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
