#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_merge
label: "cryoflow merge: batches' step folders joined"
doc: |
  Joins the step folders of a step scattered over batches of micrographs (ctf step folders,
  ordered by name: batch_001, batch_002, ...) into one folder laid out as the step writes it
  for the whole set: micrographs_ctf.star (+ micrographs_ctf_failed.star) under one optics
  table with the dataset-relative ice thickness recomputed over every micrograph,
  diagnostics/, summary.json and report.html over the whole set, each batch's own report
  under batches/.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 1
    ramMin: 1024
baseCommand: [cryoflow, merge]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  folders:
    type: Directory[]
    label: Step folders of the batches
    doc: The folders the batches' jobs wrote (one step, e.g. ctf), named so that their order is the batches' order.
    inputBinding: {position: 1}
  out_name:
    type: string
    default: ctf
    label: Output folder name
    doc: Name of the merged step folder in the working directory (the step's own name, e.g. ctf).
outputs:
  out_dir:
    type: Directory
    label: Merged step folder
    doc: For ctf, micrographs_ctf.star, micrographs_ctf_failed.star (when some had no fit), diagnostics/, batches/, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  report:
    type: File
    label: Report
    doc: report.html over the whole set, listing the batches' own reports.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's figures over the whole set and the batches it was merged from.
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
