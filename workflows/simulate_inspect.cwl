#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: Workflow
id: cryoflow_simulate_inspect
label: "Simulate a dataset, inspect its micrographs, estimate their CTF"
doc: |
  The first links of the pipeline: simulate a dataset with ground truth, write the
  inventory report of its micrographs and estimate their CTF. Grows into preprocess.cwl
  as steps land.
$namespaces:
  sbg: https://www.sevenbridges.com/
requirements:
  StepInputExpressionRequirement: {}
inputs:
  preset:
    type:
      type: enum
      symbols: [tiny, demo, realistic]
    default: tiny
    label: Simulator preset
    sbg:x: 0
    sbg:y: 100
  seed:
    type: int
    default: 0
    label: Random seed
    sbg:x: 0
    sbg:y: 250
steps:
  simulate:
    run: ../tools/simulate.cwl
    in:
      preset: preset
      seed: seed
    out: [dataset, micrographs_star, summary]
    sbg:x: 250
    sbg:y: 175
  info:
    run: ../tools/info.cwl
    in:
      micrographs: simulate/dataset
    out: [report_dir, summary]
    sbg:x: 500
    sbg:y: 100
  ctf:
    run: ../tools/ctf.cwl
    in:
      micrographs: simulate/dataset
      amplitude_contrast: {default: 0.07}
    out: [out_dir, micrographs_ctf, summary]
    sbg:x: 500
    sbg:y: 250
outputs:
  dataset:
    type: Directory
    outputSource: simulate/dataset
    sbg:x: 750
    sbg:y: 100
  inventory:
    type: Directory
    outputSource: info/report_dir
    sbg:x: 750
    sbg:y: 175
  ctf_dir:
    type: Directory
    outputSource: ctf/out_dir
    sbg:x: 750
    sbg:y: 300
