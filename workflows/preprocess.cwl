#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: Workflow
id: cryoflow_preprocess
label: "cryoflow preprocessing"
doc: |
  Micrographs in, clean particle stack and acquisition feedback out: CTF estimation with quality
  metrics, bad-micrograph detection, particle picking on the good micrographs (diameter and
  threshold chosen from the data unless given) and extraction into normalized stacks with
  particles.star (RELION 3.1) and particles.cs (cryoSPARC), reference-free 2D classification of
  the stack and the selection of the good classes, then a particle classifier learned from those
  class decisions that scores every selected particle into the clean stack (particles_clean.star
  with its own stacks and particles_clean.cs), and the feedback to acquisition (squares to
  continue or skip, holes to take next). The per-micrograph steps are scattered over batches of
  batch_size micrographs (one job per batch, in parallel where the runner can: Toil, Slurm,
  Arvados) and their batch folders merged by `cryoflow merge` into one folder per step: ctf
  (split, ctf per batch, merge); pick (the good micrographs split, picking's parameters searched
  once on up to search_sample of them spread over the set, every batch picked with those
  parameters, merged); extract (per pick batch, one box for all, merged). What is decided per
  dataset is decided once (micassess's thresholds on the merged CTF results, pick's diameter,
  threshold, CNN and junk limits by the search), so the batching does not change the outcome.
  Every step writes its folder (report.html, summary.json) into the output directory; `cryoflow
  report` indexes them.
$namespaces:
  sbg: https://www.sevenbridges.com/
requirements:
  ScatterFeatureRequirement: {}
  StepInputExpressionRequirement: {}
inputs:
  micrographs:
    type: Directory
    label: Micrographs
    doc: Folder of motion-corrected micrographs (MRC), searched recursively (EPU layout understood).
    sbg:x: 0
    sbg:y: 0
  pixel_size:
    type: float?
    label: Pixel size (Å)
    doc: Pixel size in Å; default from the MRC headers.
    sbg:x: 0
    sbg:y: 150
  voltage:
    type: float
    default: 300.0
    label: Voltage (kV)
    sbg:x: 0
    sbg:y: 300
  cs:
    type: float
    default: 2.7
    label: Cs (mm)
    sbg:x: 0
    sbg:y: 450
  amplitude_contrast:
    type: float
    default: 0.1
    label: Amplitude contrast
    sbg:x: 0
    sbg:y: 600
  batch_size:
    type: int
    default: 10
    label: Micrographs per job
    doc: Micrographs per batch of the per-micrograph steps, CTF, picking and extraction (one job per batch each, run in parallel where the runner can); the results do not depend on it.
    sbg:x: 300
    sbg:y: 550
  search_sample:
    type: int
    default: 40
    label: Pick search sample
    doc: Micrographs, spread evenly over the good ones, on which picking's parameters (diameter, threshold, the CNN picker's training, the junk tests' limits) are decided once before every batch is picked with them; all of them when there are no more.
    sbg:x: 1500
    sbg:y: 550
  diameter:
    type: float?
    label: Particle diameter (Å)
    doc: Particle diameter in Å; default, searched from the data by the pick step (extract sizes its box from it).
    sbg:x: 1800
    sbg:y: 650
  box:
    type: int?
    label: Box size (px)
    doc: Particle box in output pixels (even), the same for every batch; default, 1.5 x the diameter (of the pick search) rounded up to an FFT-friendly size.
    sbg:x: 2100
    sbg:y: 650
  bin:
    type: float
    default: 1.0
    label: Binning factor
    doc: Fourier binning of the particle images (>= 1).
    sbg:x: 2100
    sbg:y: 800
  classes:
    type: int?
    label: Number of 2D classes
    doc: Number of 2D classes; default, one class per ~400 particles (2 to 100).
    sbg:x: 2700
    sbg:y: 550
  iterations:
    type: int
    default: 25
    label: 2D iterations
    doc: Iterations of the 2D classification.
    sbg:x: 2700
    sbg:y: 700
steps:
  ctf_split:
    run: ../tools/split.cwl
    label: Micrograph batches
    in:
      micrographs: micrographs
      # the folder's CWL name (a runner may stage it under another, e.g. Toil), as the CTF jobs stage it
      folder_name: {valueFrom: $(inputs.micrographs.basename)}
      batch_size: batch_size
    out: [batches]
    sbg:x: 300
    sbg:y: 300
  ctf_batches:
    run: ../tools/ctf.cwl
    label: CTF (per batch)
    scatter: batch
    in:
      batch: ctf_split/batches
      images: micrographs
      pixel_size: pixel_size
      voltage: voltage
      cs: cs
      amplitude_contrast: amplitude_contrast
      out_name: {valueFrom: $(inputs.batch.nameroot)}
    out: [out_dir]
    sbg:x: 600
    sbg:y: 300
  ctf:
    run: ../tools/merge.cwl
    label: CTF (merged)
    in:
      folders: ctf_batches/out_dir
      out_name: {default: ctf}
    out: [out_dir, summary]
    sbg:x: 900
    sbg:y: 300
  micassess:
    run: ../tools/micassess.cwl
    label: Bad-micrograph detection
    in:
      ctf_dir: ctf/out_dir
      micrographs: micrographs
    out: [out_dir, micrographs_good, micrographs_rejected, summary]
    sbg:x: 1200
    sbg:y: 300
  pick_split:
    run: ../tools/split.cwl
    label: Pick batches
    in:
      star: micassess/micrographs_good
      batch_size: batch_size
      sample_size: search_sample
      out_name: {default: pick_split}
    out: [batches, sample_star]
    sbg:x: 1500
    sbg:y: 300
  pick_search:
    run: ../tools/pick.cwl
    label: Pick parameter search
    in:
      micrographs: pick_split/sample_star
      images: micrographs
      diameter: diameter
      out_name: {default: pick_search}
    out: [out_dir]
    sbg:x: 1800
    sbg:y: 150
  pick_batches:
    run: ../tools/pick.cwl
    label: Pick (per batch)
    scatter: micrographs
    in:
      micrographs: pick_split/batches
      images: micrographs
      parameters: pick_search/out_dir
      out_name: {valueFrom: $(inputs.micrographs.nameroot)}
    out: [out_dir]
    sbg:x: 1800
    sbg:y: 450
  pick:
    run: ../tools/merge.cwl
    label: Picking (merged)
    in:
      folders: pick_batches/out_dir
      search: pick_search/out_dir
      out_name: {default: pick}
    out: [out_dir, coordinates, report, summary]
    sbg:x: 2100
    sbg:y: 80
  extract_batches:
    run: ../tools/extract.cwl
    label: Extract (per batch)
    scatter: [micrographs, coordinates]
    scatterMethod: dotproduct
    in:
      micrographs: pick_split/batches
      coordinates: pick_batches/out_dir
      images: micrographs
      allow_empty: {default: true}
      box: box
      bin: bin
      out_name: {valueFrom: $(inputs.micrographs.nameroot)}
    out: [out_dir]
    sbg:x: 2100
    sbg:y: 450
  extract:
    run: ../tools/merge.cwl
    label: Extraction (merged)
    in:
      folders: extract_batches/out_dir
      out_name: {default: extract}
    out: [out_dir, particles, particles_cs, report, summary]
    sbg:x: 2400
    sbg:y: 300
  classify2d:
    run: ../tools/classify2d.cwl
    label: 2D classification
    in:
      particles: extract/out_dir
      classes: classes
      iterations: iterations
    out: [out_dir, class_averages, model, particles_classified, report, summary]
    sbg:x: 2700
    sbg:y: 300
  classassess:
    run: ../tools/classassess.cwl
    label: Class selection
    in:
      classes: classify2d/out_dir
      particles: extract/out_dir
    out: [out_dir, classes_selected, particles_selected, particles_rejected, report, summary]
    sbg:x: 3000
    sbg:y: 300
  particles_model:
    run: ../tools/particles_train.cwl
    label: Particle classifier
    in:
      selected: classassess/particles_selected
      rejected: classassess/particles_rejected
      particles: extract/out_dir
    out: [out_dir, model, report, summary]
    sbg:x: 3300
    sbg:y: 300
  particles:
    run: ../tools/particles_score.cwl
    label: Clean particle stack
    in:
      particles_star: classassess/particles_selected
      rejected: classassess/particles_rejected
      particles: extract/out_dir
      model: particles_model/model
    out: [out_dir, particles_clean, particles_clean_cs, micrographs_yield, report, summary]
    sbg:x: 3600
    sbg:y: 300
  feedback:
    run: ../tools/feedback.cwl
    label: Acquisition feedback
    in:
      micrographs: micrographs
      ctf_dir: ctf/out_dir
      micassess_dir: micassess/out_dir
      pick_dir: pick/out_dir
      particles_dir: particles/out_dir
    out: [out_dir, feedback, plan, report, summary]
    sbg:x: 3900
    sbg:y: 300
outputs:
  ctf_dir:
    type: Directory
    label: CTF results
    outputSource: ctf/out_dir
    sbg:x: 1050
    sbg:y: 100
  micassess_dir:
    type: Directory
    label: Micrograph assessment
    outputSource: micassess/out_dir
    sbg:x: 1350
    sbg:y: 100
  micrographs_good:
    type: File
    label: Good micrographs
    outputSource: micassess/micrographs_good
    sbg:x: 1350
    sbg:y: -100
  pick_dir:
    type: Directory
    label: Picks
    outputSource: pick/out_dir
    sbg:x: 2250
    sbg:y: -120
  extract_dir:
    type: Directory
    label: Particle stacks
    outputSource: extract/out_dir
    sbg:x: 2550
    sbg:y: 100
  particles_extracted:
    type: File?
    label: Extracted particles (STAR)
    outputSource: extract/particles
    sbg:x: 2550
    sbg:y: -100
  classify2d_dir:
    type: Directory
    label: 2D classes
    outputSource: classify2d/out_dir
    sbg:x: 2850
    sbg:y: 100
  class_averages:
    type: File
    label: Class averages (MRC stack)
    outputSource: classify2d/class_averages
    sbg:x: 2850
    sbg:y: -220
  classassess_dir:
    type: Directory
    label: Class selection
    outputSource: classassess/out_dir
    sbg:x: 3150
    sbg:y: 100
  particles_selected:
    type: File
    label: Particles of kept classes (STAR)
    outputSource: classassess/particles_selected
    sbg:x: 3150
    sbg:y: -100
  particles_model_dir:
    type: Directory
    label: Particle model
    outputSource: particles_model/out_dir
    sbg:x: 3450
    sbg:y: 100
  particles_dir:
    type: Directory
    label: Clean particle stack
    doc: particles_clean.star, CleanParticles/*.mrcs, particles_clean.cs (cryoSPARC), micrographs_yield.star, report.html.
    outputSource: particles/out_dir
    sbg:x: 3750
    sbg:y: 100
  particles_clean:
    type: File
    label: Clean particles (STAR)
    outputSource: particles/particles_clean
    sbg:x: 3750
    sbg:y: -100
  feedback_dir:
    type: Directory
    label: Feedback
    outputSource: feedback/out_dir
    sbg:x: 4050
    sbg:y: 100
  feedback_json:
    type: File
    label: Feedback (JSON)
    outputSource: feedback/feedback
    sbg:x: 4050
    sbg:y: -220
