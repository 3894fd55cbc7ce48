#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: Workflow
id: cryoflow_simulate_inspect
label: "Simulate a dataset, inspect its micrographs, estimate their CTF, assess them"
doc: |
  The first links of the pipeline: simulate a dataset with ground truth, write the
  inventory report of its micrographs, estimate their CTF and flag the bad ones. Grows into preprocess.cwl
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
    sbg:y: 250
  seed:
    type: int
    default: 0
    label: Random seed
    sbg:x: 0
    sbg:y: 50
steps:
  simulate:
    run: ../tools/simulate.cwl
    label: Simulate
    in:
      preset: preset
      seed: seed
    out: [dataset, micrographs_star, summary]
    sbg:x: 250
    sbg:y: 150
  info:
    run: ../tools/info.cwl
    label: Inventory
    in:
      micrographs: simulate/dataset
    out: [report_dir, summary]
    sbg:x: 550
    sbg:y: 0
  ctf:
    run: ../tools/ctf.cwl
    label: CTF
    in:
      micrographs: simulate/dataset
      amplitude_contrast: {default: 0.07}
    out: [out_dir, micrographs_ctf, summary]
    sbg:x: 550
    sbg:y: 300
  micassess:
    run: ../tools/micassess.cwl
    label: Bad-micrograph detection
    in:
      ctf_dir: ctf/out_dir
      micrographs: simulate/dataset
    out: [out_dir, micrographs_good, micrographs_rejected, summary]
    sbg:x: 850
    sbg:y: 450
outputs:
  dataset:
    type: Directory
    outputSource: simulate/dataset
    label: Dataset
    sbg:x: 850
    sbg:y: 150
  inventory:
    type: Directory
    outputSource: info/report_dir
    label: Inventory report
    sbg:x: 850
    sbg:y: 0
  ctf_dir:
    type: Directory
    outputSource: ctf/out_dir
    label: CTF results
    sbg:x: 850
    sbg:y: 300
  micassess_dir:
    type: Directory
    outputSource: micassess/out_dir
    label: Micrograph assessment
    sbg:x: 1150
    sbg:y: 450
