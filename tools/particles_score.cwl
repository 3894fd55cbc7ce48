#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_particles_score
label: "cryoflow particles score: the clean particle stack"
doc: |
  Scores every particle of a STAR file with a trained particle classifier (and, given
  classassess's rejected particles, takes back those it is confident about) and writes the
  clean stack (particles_clean.star with its own CleanParticles/*.mrcs and particles_clean.cs for
  cryoSPARC), particles_rejected.star, the good particles per micrograph
  (micrographs_yield.star), summary.json and report.html.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 2048
baseCommand: [cryoflow, particles, score]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  particles_star:
    type: File
    label: Particles (STAR)
    doc: Particle STAR file to score (classassess's particles_selected.star, or the extract step's particles.star of new micrographs).
    inputBinding: {prefix: --particles}
  particles:
    type: Directory?
    label: Extract step folder
    doc: Folder holding the particle stacks that the STAR file names (the extract step's output).
    inputBinding: {prefix: --images}
  rejected:
    type: File?
    label: Particles of rejected classes
    doc: classassess's particles_rejected.star; scored too, and the particles the classifier is confident about (rescue_threshold) are taken back into the clean stack.
    inputBinding: {prefix: --rejected}
  rescue_threshold:
    type: float?
    label: Rescue threshold
    doc: Minimum score to take back a particle of a rejected class (0-1); default 0.8.
    inputBinding: {prefix: --rescue-threshold}
  model:
    type: File
    label: Particle model
    doc: particle_model.pt from cryoflow particles train.
    inputBinding: {prefix: --model}
  threshold:
    type: float?
    label: Score threshold
    doc: Minimum score to keep a particle (0-1); default, the model's.
    inputBinding: {prefix: --threshold}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: particles
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Clean stack folder
    doc: particles_clean.star, CleanParticles/*.mrcs, particles_clean.cs, particles_rejected.star, micrographs_yield.star, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  particles_clean:
    type: File
    label: Clean particles (STAR)
    doc: particles_clean.star, RELION 3.1, naming the images in the folder's CleanParticles/*.mrcs.
    outputBinding: {glob: $(inputs.out_name)/particles_clean.star}
  particles_clean_cs:
    type: File?
    label: Clean particles (cryoSPARC .cs)
    doc: particles_clean.cs, the clean particles as a cryoSPARC dataset (absent when no particle was kept or the STAR file has no coordinates).
    outputBinding: {glob: $(inputs.out_name)/particles_clean.cs}
  micrographs_yield:
    type: File
    label: Yield per micrograph (STAR)
    doc: micrographs_yield.star, per micrograph cfPicks, cfGoodParticles, cfGoodFraction, cfMeanScore.
    outputBinding: {glob: $(inputs.out_name)/micrographs_yield.star}
  report:
    type: File
    label: Report
    doc: report.html, score distribution, kept and rejected examples, yield per micrograph.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures (particles kept, threshold, yield, speed).
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
