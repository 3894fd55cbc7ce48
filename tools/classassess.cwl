#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_classassess
label: "cryoflow classassess: 2D class selection"
doc: |
  Scores every 2D class with a model trained on class averages of known truth (features of
  the average and of the classification, and a small CNN), keeps the good classes (adaptive
  threshold near the calibrated 0.5 unless min_score is given; keep/reject overrides) and
  splits the particles into particles_selected.star and particles_rejected.star. Takes the
  classify2d folder and, so the particle stacks can be found, the extract folder. Writes
  classes_selected.star (score, decision and evidence per class), classes_selected.mrcs,
  the two particle STAR files, summary.json and report.html.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 1
    ramMin: 2048
baseCommand: [cryoflow, classassess]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  classes:
    type: Directory
    label: Classify2d step folder
    doc: Output folder of cryoflow classify2d (classes.mrcs, model.star, particles.star), or a RELION Class2D job folder.
    inputBinding: {prefix: --classes}
  particles:
    type: Directory?
    label: Extract step folder
    doc: Folder holding the particle stacks that the classes' particles.star names (the extract step's output).
    inputBinding: {prefix: --images}
  min_score:
    type: float?
    label: Minimum class score
    doc: Keep classes scoring at least this (0-1); default, adaptive near the calibrated 0.5.
    inputBinding: {prefix: --min-score}
  keep:
    type: string?
    label: Classes to keep
    doc: Class numbers kept whatever their score, e.g. 1,4,7-9.
    inputBinding: {prefix: --keep}
  reject:
    type: string?
    label: Classes to reject
    doc: Class numbers rejected whatever their score.
    inputBinding: {prefix: --reject}
  rounds:
    type: int
    default: 1
    label: Rounds
    doc: Rounds of reclassifying the kept particles (2D classification again) and assessing again.
    inputBinding: {prefix: --rounds}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: classassess
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Classassess step folder
    doc: classes_selected.star, classes_selected.mrcs, classes_all.mrcs, particles_selected.star, particles_rejected.star, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  classes_selected:
    type: File
    label: Class decisions (STAR)
    doc: classes_selected.star, per class rlnClassScore, cfSelected, cfDecision, cfEvidence and the features.
    outputBinding: {glob: $(inputs.out_name)/classes_selected.star}
  particles_selected:
    type: File
    label: Particles of kept classes (STAR)
    doc: particles_selected.star, the particles of kept classes with rlnClassScore.
    outputBinding: {glob: $(inputs.out_name)/particles_selected.star}
  particles_rejected:
    type: File
    label: Particles of rejected classes (STAR)
    doc: particles_rejected.star, the particles of rejected classes with rlnClassScore.
    outputBinding: {glob: $(inputs.out_name)/particles_rejected.star}
  report:
    type: File
    label: Report
    doc: report.html, the class gallery with scores and decisions, the score histogram with the threshold, the evidence.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures (classes and particles kept, threshold, features available).
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
