#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_split
label: "cryoflow split: micrographs in batches"
doc: |
  Cuts a micrograph set into batches, one micrographs STAR file each (batch_001.star, ...,
  batch_size micrographs each, in the order of the set), for a per-micrograph step scattered
  over them (ctf on the folder; pick and extract on micassess's micrographs_good.star;
  `cryoflow merge` joins the batches' folders). A folder's micrographs are named <folder's
  basename>/<path inside the folder>, so a batch resolves in a job that stages the folder under
  its basename (tools/ctf.cwl does); optics groups come from the pixel sizes in the headers,
  numbered over the whole set. A STAR file is cut as it is. With sample_size, sample.star holds up
  to that many micrographs spread evenly over the set: pick's parameter search runs on it
  before the batches are picked with its parameters.
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
inputs:
  micrographs:
    type: Directory?
    label: Micrographs
    doc: Folder of motion-corrected micrographs (MRC), searched recursively (EPU layout understood). Give this or star.
    inputBinding: {position: 1}
  star:
    type: File?
    label: Micrographs (STAR)
    doc: A micrographs STAR file (e.g. micassess's micrographs_good.star), cut as it is. Give this or micrographs.
    inputBinding: {position: 1}
  folder_name:
    type: string?
    label: Folder name in the names
    doc: The name the micrographs folder is known by in the jobs that use the batches (its CWL basename; a runner such as Toil may stage it here under another name); default, its name here.
    inputBinding: {prefix: --folder-name}
  batch_size:
    type: int
    default: 10
    label: Micrographs per batch
    doc: Micrographs per batch (the last batch may hold fewer); one scattered job per batch.
    inputBinding: {prefix: --batch-size}
  sample_size:
    type: int?
    label: Micrographs of the sample
    doc: Also write sample.star, up to this many micrographs spread evenly over the set (all of them when the set is no larger), for pick's parameter search.
    inputBinding: {prefix: --sample}
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
  sample_star:
    type: File?
    label: Sample (STAR)
    doc: sample.star (with sample_size), micrographs spread evenly over the set.
    outputBinding: {glob: $(inputs.out_name)/sample.star}
