#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_split
label: "cryoflow split: micrographs in batches"
doc: |
  Cuts a micrograph set into batches, one micrographs STAR file each (batch_001.star, ...,
  batch_size micrographs each, in the order of the set), for a per-micrograph step scattered
  over them (the CTF step; `cryoflow merge` joins the batches' folders). A folder's
  micrographs are named <folder's basename>/<path inside the folder>, so a batch resolves in a
  job that stages the folder under its basename (tools/ctf.cwl does); optics groups come from
  the pixel sizes in the headers, numbered over the whole set.
$namespaces:
  sbg: https://www.sevenbridges.com/
  edam: http://edamontology.org/
hints:
  DockerRequirement:
    dockerPull: cryoflow:cpu
  ResourceRequirement:
    coresMin: 1
    ramMin: 1024
baseCommand: [cryoflow, split]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
  # the folder's CWL name (a runner may stage it under another, e.g. Toil), as the CTF jobs stage it
  - {prefix: --folder-name, valueFrom: $(inputs.micrographs.basename)}
inputs:
  micrographs:
    type: Directory
    label: Micrographs
    doc: Folder of motion-corrected micrographs (MRC), searched recursively (EPU layout understood).
    inputBinding: {position: 1}
  batch_size:
    type: int
    default: 10
    label: Micrographs per batch
    doc: Micrographs per batch (the last batch may hold fewer); one scattered job per batch.
    inputBinding: {prefix: --batch-size}
  out_name:
    type: string
    default: batches
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Batch folder
    doc: The batch STAR files.
    outputBinding: {glob: $(inputs.out_name)}
  batches:
    type: File[]
    label: Batches (STAR)
    doc: batch_001.star, batch_002.star, ... in order, RELION 3.1 micrographs STAR (data_optics + data_micrographs).
    outputBinding: {glob: $(inputs.out_name)/batch_*.star}
