#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_info
label: "cryoflow info: what a set of micrographs holds"
doc: |
  Reads every micrograph (folders searched recursively, EPU layout understood) and writes an
  inventory report: counts, sizes, pixel sizes, value ranges and thumbnails.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 1
    ramMin: 2048
baseCommand: [cryoflow, info]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  micrographs:
    type: Directory
    label: Micrographs
    doc: Folder of motion-corrected micrographs (MRC), searched recursively.
    inputBinding: {position: 1}
  pixel_size:
    type: float?
    label: Pixel size (Å)
    doc: Overrides the pixel size in the MRC headers (Å per pixel).
    inputBinding: {prefix: --pixel-size}
  out_name:
    type: string
    default: info
    label: Output folder name
    doc: Name of the report folder written in the working directory.
outputs:
  report_dir:
    type: Directory
    label: Report folder
    doc: report.html, its figures and summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  summary:
    type: File
    label: Summary
    doc: summary.json with the counts.
    outputBinding: {glob: $(inputs.out_name)/summary.json}
