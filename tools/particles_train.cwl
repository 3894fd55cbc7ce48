#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_particles_train
label: "cryoflow particles train: particle classifier"
doc: |
  Trains a small CNN to tell good particles from junk in single particle images, with the
  dataset's own 2D class decisions as labels (classassess's particles_selected.star against
  particles_rejected.star), validated on held-out micrographs. Writes particle_model.pt,
  summary.json and report.html.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 4096
baseCommand: [cryoflow, particles, train]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  selected:
    type: File
    label: Particles of kept classes (STAR)
    doc: particles_selected.star of classassess (positives).
    inputBinding: {prefix: --selected}
  rejected:
    type: File
    label: Particles of rejected classes (STAR)
    doc: particles_rejected.star of classassess (negatives).
    inputBinding: {prefix: --rejected}
  particles:
    type: Directory?
    label: Extract step folder
    doc: Folder holding the particle stacks that the STAR files name (the extract step's output).
    inputBinding: {prefix: --images}
  epochs:
    type: int?
    label: Epochs
    doc: Passes over the training images; default, enough for about 800 optimizer steps (at least 6).
    inputBinding: {prefix: --epochs}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: particles_model
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Particle model folder
    doc: particle_model.pt, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  model:
    type: File
    label: Particle model
    doc: particle_model.pt, the trained classifier (torch, weights only).
    outputBinding: {glob: $(inputs.out_name)/particle_model.pt}
  report:
    type: File
    label: Report
    doc: report.html, learning curve, held-out scores by label, examples.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the training figures (AUC against the class labels on held-out micrographs).
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
