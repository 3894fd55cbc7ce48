#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_micassess
label: "cryoflow micassess: bad-micrograph detection with reasons"
doc: |
  Gives every micrograph of a CTF-step output a calibrated probability of being good and a
  reason (contamination, empty, no particles, crystalline ice, thick ice, carbon, poor CTF),
  with the features that drove the call. Writes micrographs_good.star and
  micrographs_rejected.star (RELION 3.1+, all input columns kept), summary.json and report.html.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 2
    ramMin: 4096
baseCommand: [cryoflow, micassess]
arguments:
  - {prefix: --micrographs, valueFrom: $(inputs.ctf_dir.path)/micrographs_ctf.star}
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  ctf_dir:
    type: Directory
    label: CTF step folder
    doc: Output folder of cryoflow ctf (micrographs_ctf.star, and micrographs_ctf_failed.star when some had no fit).
  micrographs:
    type: Directory
    label: Micrographs
    doc: The folder of micrographs given to the CTF step; the images are looked up in it.
    inputBinding: {prefix: --images}
  threshold:
    type: string
    default: auto
    label: Threshold on P(good)
    doc: auto (calibrated 0.5), knee (emptiest point of the probability histogram) or a probability between 0 and 1.
    inputBinding: {prefix: --threshold}
  model:
    type: File?
    label: Model file
    doc: A model from 'cryoflow micassess train' (default, the shipped model).
    inputBinding: {prefix: --model}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: micassess
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Micassess step folder
    doc: micrographs_good.star, micrographs_rejected.star, report.html, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  micrographs_good:
    type: File
    label: Good micrographs (STAR)
    doc: RELION 3.1+ micrographs_good.star, input to picking.
    outputBinding: {glob: $(inputs.out_name)/micrographs_good.star}
  micrographs_rejected:
    type: File
    label: Rejected micrographs (STAR)
    doc: RELION 3.1+ micrographs_rejected.star with probability, reason and evidence.
    outputBinding: {glob: $(inputs.out_name)/micrographs_rejected.star}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures.
    outputBinding: {glob: $(inputs.out_name)/summary.json}
