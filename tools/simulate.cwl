#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_simulate
label: "cryoflow simulate: synthetic micrographs with ground truth"
doc: |
  Simulates a cryo-EM dataset (EPU-style grid squares, holes and micrographs) with complete
  ground truth: per-micrograph defocus, ice thickness, good/bad label and reason; per-particle
  position, orientation, species and junk flag. Used for tests, benchmarks, training and the demo.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 4096
baseCommand: [cryoflow, simulate]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  preset:
    type:
      type: enum
      symbols: [tiny, demo, realistic]
    default: demo
    label: Preset
    doc: "tiny: a few small micrographs (tests); demo: ~30 micrographs of 1024² at ~1.5 Å/px; realistic: 4096² at ~0.9 Å/px."
    inputBinding: {prefix: --preset}
  seed:
    type: int
    default: 0
    label: Random seed
    doc: The same seed gives the same dataset, byte for byte.
    inputBinding: {prefix: --seed}
  out_name:
    type: string
    default: simulate
    label: Output folder name
    doc: Name of the dataset folder written in the working directory.
outputs:
  dataset:
    type: Directory
    label: Simulated dataset
    doc: Micrographs in EPU layout, truth/ STAR files, dataset.json, report.html.
    outputBinding: {glob: $(inputs.out_name)}
  micrographs_star:
    type: File
    label: Micrograph STAR file
    doc: RELION 3.1 micrographs.star (data_optics + data_micrographs) naming every micrograph.
    outputBinding: {glob: $(inputs.out_name)/micrographs.star}
  summary:
    type: File
    label: Summary
    doc: summary.json with the dataset's key figures.
    outputBinding: {glob: $(inputs.out_name)/summary.json}
