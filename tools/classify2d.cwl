#!/usr/bin/env cwl-runner
cwlVersion: v1.0
class: CommandLineTool
id: cryoflow_classify2d
label: "cryoflow classify2d: reference-free 2D classification"
doc: |
  Reference-free 2D classification of a particle stack (maximum likelihood, CPU or CUDA).
  Takes the extract step's whole folder (so its Particles/*.mrcs stacks are staged beside
  particles.star, which names them relative to its own folder) and classifies the particles of
  particles.star (or the STAR file named by star_name) in it. K defaults to one class per ~400
  particles (2 to 100), the mask to the picking diameter + 10% (cfDiameter or the extract
  step's summary.json). Writes classes.mrcs (the class averages), model.star (RELION
  model_general + model_classes), particles.star (the input columns plus rlnClassNumber,
  rlnAnglePsi, rlnOriginXAngst/YAngst, rlnMaxValueProbDistribution), iterations/,
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
baseCommand: [cryoflow, classify2d]
arguments:
  - {prefix: --out, valueFrom: $(inputs.out_name)}
inputs:
  particles:
    type: Directory
    label: Extract step folder
    doc: Output folder of cryoflow extract (particles.star and the Particles/*.mrcs stacks it names, summary.json with the diameter), or any folder holding a RELION particle STAR file with CTF columns and its stacks.
    inputBinding: {prefix: --particles, valueFrom: $(self.path)/$(inputs.star_name)}
  star_name:
    type: string
    default: particles.star
    label: Particle STAR name
    doc: Name of the particle STAR file inside the particles folder (stack paths in it are relative to that folder).
  classes:
    type: int?
    label: Number of classes
    doc: Number of classes K; default, one class per ~400 particles (2 to 100).
    inputBinding: {prefix: --classes}
  iterations:
    type: int
    default: 25
    label: Iterations
    doc: Number of iterations of the classification.
    inputBinding: {prefix: --iterations}
  mask_diameter:
    type: float?
    label: Mask diameter (Å)
    doc: Diameter of the circular mask in Å; default, the picking diameter + 10% (or estimated from the particles).
    inputBinding: {prefix: --mask-diameter}
  seed:
    type: int
    default: 0
    label: Random seed
    doc: Random seed; the same input and seed give the same output.
    inputBinding: {prefix: --seed}
  threads:
    type: int?
    label: CPU threads
    doc: CPU threads for torch; default, torch's choice (all cores).
    inputBinding: {prefix: --threads}
  device:
    type: string
    default: auto
    label: Device
    doc: Where torch runs, auto, cpu or cuda.
    inputBinding: {prefix: --device}
  out_name:
    type: string
    default: classify2d
    label: Output folder name
    doc: Name of the step's output folder in the working directory.
outputs:
  out_dir:
    type: Directory
    label: Classify2d step folder
    doc: classes.mrcs, model.star, particles.star, iterations/, report.html, figures/, summary.json.
    outputBinding: {glob: $(inputs.out_name)}
  class_averages:
    type: File
    label: Class averages (MRC stack)
    doc: classes.mrcs, the K class averages (masked, centred) in class order, as model.star's rlnReferenceImage names them.
    outputBinding: {glob: $(inputs.out_name)/classes.mrcs}
  model:
    type: File
    label: Model (STAR)
    doc: model.star, blocks model_general and model_classes (rlnReferenceImage k@classes.mrcs, rlnClassDistribution, cfParticleCount, rlnEstimatedResolution).
    outputBinding: {glob: $(inputs.out_name)/model.star}
  particles_classified:
    type: File
    label: Classified particles (STAR)
    doc: particles.star, the input particles with rlnClassNumber, rlnAnglePsi, rlnOriginXAngst/YAngst and rlnMaxValueProbDistribution; rlnImageName as in the input (relative to the input folder).
    outputBinding: {glob: $(inputs.out_name)/particles.star}
  report:
    type: File
    label: Report
    doc: report.html, the class averages, their sizes and resolutions, convergence over the iterations.
    format: edam:format_2331
    outputBinding: {glob: $(inputs.out_name)/report.html}
  summary:
    type: File
    label: Summary
    doc: summary.json with the step's key figures (particles, classes, mask, per-class counts and resolutions).
    format: edam:format_3464
    outputBinding: {glob: $(inputs.out_name)/summary.json}
