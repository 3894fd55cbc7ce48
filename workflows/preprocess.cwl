#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: Workflow
id: cryoflow_preprocess
label: "cryoflow preprocessing"
doc: |
  Micrographs in, particle stack out: CTF estimation with quality metrics, bad-micrograph
  detection, particle picking on the good micrographs (diameter and threshold chosen from the
  data unless given) and extraction into normalized stacks with particles.star (RELION 3.1)
  and particles.cs (cryoSPARC), then reference-free 2D classification of the stack (class
  averages, model.star, particles.star with class assignments) and the selection of the good
  classes (particles_selected.star). The particle classifier and feedback join as they land
  (issue 7). Every step writes its folder (report.html, summary.json) into the output
  directory; `cryoflow report` indexes them.
$namespaces:
  sbg: https://www.sevenbridges.com/
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
  diameter:
    type: float?
    label: Particle diameter (Å)
    doc: Particle diameter in Å; default, searched from the data by the pick step (extract sizes its box from it).
    sbg:x: 600
    sbg:y: 500
  box:
    type: int?
    label: Box size (px)
    doc: Particle box in output pixels (even); default, 1.5 x the diameter rounded up to an FFT-friendly size.
    sbg:x: 900
    sbg:y: 550
  bin:
    type: float
    default: 1.0
    label: Binning factor
    doc: Fourier binning of the particle images (>= 1).
    sbg:x: 900
    sbg:y: 700
  classes:
    type: int?
    label: Number of 2D classes
    doc: Number of 2D classes; default, one class per ~400 particles (2 to 100).
    sbg:x: 1200
    sbg:y: 550
  iterations:
    type: int
    default: 25
    label: 2D iterations
    doc: Iterations of the 2D classification.
    sbg:x: 1200
    sbg:y: 700
steps:
  ctf:
    run: ../tools/ctf.cwl
    label: CTF
    in:
      micrographs: micrographs
      pixel_size: pixel_size
      voltage: voltage
      cs: cs
      amplitude_contrast: amplitude_contrast
    out: [out_dir, micrographs_ctf, summary]
    sbg:x: 300
    sbg:y: 300
  micassess:
    run: ../tools/micassess.cwl
    label: Bad-micrograph detection
    in:
      ctf_dir: ctf/out_dir
      micrographs: micrographs
    out: [out_dir, micrographs_good, micrographs_rejected, summary]
    sbg:x: 600
    sbg:y: 300
  pick:
    run: ../tools/pick.cwl
    label: Picking
    in:
      micrographs: micassess/micrographs_good
      images: micrographs
      diameter: diameter
    out: [out_dir, coordinates, report, summary]
    sbg:x: 900
    sbg:y: 300
  extract:
    run: ../tools/extract.cwl
    label: Extraction
    in:
      micrographs: micassess/micrographs_good
      coordinates: pick/out_dir
      images: micrographs
      box: box
      bin: bin
    out: [out_dir, particles, particles_cs, report, summary]
    sbg:x: 1200
    sbg:y: 300
  classify2d:
    run: ../tools/classify2d.cwl
    label: 2D classification
    in:
      particles: extract/out_dir
      classes: classes
      iterations: iterations
    out: [out_dir, class_averages, model, particles_classified, report, summary]
    sbg:x: 1500
    sbg:y: 300
  classassess:
    run: ../tools/classassess.cwl
    label: Class selection
    in:
      classes: classify2d/out_dir
      particles: extract/out_dir
    out: [out_dir, classes_selected, particles_selected, particles_rejected, report, summary]
    sbg:x: 1800
    sbg:y: 300
outputs:
  ctf_dir:
    type: Directory
    label: CTF results
    outputSource: ctf/out_dir
    sbg:x: 600
    sbg:y: 100
  micassess_dir:
    type: Directory
    label: Micrograph assessment
    outputSource: micassess/out_dir
    sbg:x: 900
    sbg:y: 100
  micrographs_good:
    type: File
    label: Good micrographs
    outputSource: micassess/micrographs_good
    sbg:x: 900
    sbg:y: -100
  pick_dir:
    type: Directory
    label: Picks
    outputSource: pick/out_dir
    sbg:x: 1200
    sbg:y: 100
  extract_dir:
    type: Directory
    label: Particle stacks
    outputSource: extract/out_dir
    sbg:x: 1500
    sbg:y: 100
  particles:
    type: File
    label: Particles (STAR)
    outputSource: extract/particles
    sbg:x: 1500
    sbg:y: -100
  classify2d_dir:
    type: Directory
    label: 2D classes
    outputSource: classify2d/out_dir
    sbg:x: 1800
    sbg:y: 100
  class_averages:
    type: File
    label: Class averages (MRC stack)
    outputSource: classify2d/class_averages
    sbg:x: 1800
    sbg:y: -100
  classassess_dir:
    type: Directory
    label: Class selection
    outputSource: classassess/out_dir
    sbg:x: 2100
    sbg:y: 100
  particles_selected:
    type: File
    label: Particles of kept classes (STAR)
    outputSource: classassess/particles_selected
    sbg:x: 2100
    sbg:y: -100
